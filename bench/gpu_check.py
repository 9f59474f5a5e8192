#!/usr/bin/env python3
"""One-shot GPU check of `omniopd_kernels` for a lent H100/H200 (self-contained, < 5 minutes).

1. Correctness: every Triton op against its float64 reference on the GPU (odd shapes, fp32 and bf16,
   several vocabulary splits and backward row chunks), by the tolerance rule of the tests.
2. Floors: device-to-device copy bandwidth and bf16 matmul rate, measured here.
3. Timings at DESIGN.md §4 shapes (N=16384, V=151936, D=2048, bf16): ours vs eager PyTorch,
   torch.compile and Liger-Kernel (optional: `pip install --no-deps` its wheel first), median time,
   peak extra memory, ratio to the floor. An op whose check failed gets no speed reported.

Prints one markdown table and writes it to bench/results/gpu_<card>.md (or --out).
Usage: python bench/gpu_check.py [--small] [--budget-s 270] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():  # --small smoke runs on CPU go through the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def import_kernels():
    """`omniopd_kernels` if installed, else straight from the checkout's kernels/ folder."""
    try:
        import omniopd_kernels
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "omniopd_kernels", REPO / "kernels" / "__init__.py", submodule_search_locations=[str(REPO / "kernels")])
        omniopd_kernels = importlib.util.module_from_spec(spec)
        sys.modules["omniopd_kernels"] = omniopd_kernels
        spec.loader.exec_module(omniopd_kernels)
    return omniopd_kernels


K = import_kernels()
from omniopd_kernels import _linear_tiles  # noqa: E402
from omniopd_kernels.cosine_similarity import cosine_similarity_naive  # noqa: E402
from omniopd_kernels.entropy_logprob import entropy_logprob_naive  # noqa: E402
from omniopd_kernels.linear_entropy_logprob import linear_entropy_logprob_naive  # noqa: E402
from omniopd_kernels.linear_omniopd_loss import linear_omniopd_loss_naive  # noqa: E402
from omniopd_kernels.omniopd_loss import omniopd_loss_naive  # noqa: E402
from omniopd_kernels.select_forks import select_forks_naive  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GiB = 1 << 30


# ----------------------------------------------------------------------------- measuring
def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, budget_s: float = 1.5, max_reps: int = 15, warmup: int = 1) -> float:
    """Median wall time of fn() in ms (CUDA events on GPU), after `warmup` calls (autotune happens there)."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    t0 = time.time()
    while len(times) < max_reps and (len(times) < 3 or time.time() - t0 < budget_s):
        if DEV == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - s) * 1e3)
    return statistics.median(times)


def peak_extra_gib(fn) -> float | None:
    """Peak device memory above what was allocated before fn(), outputs included."""
    if DEV != "cuda":
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / GiB


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    n = (1 << 30) if DEV == "cuda" else (1 << 24)
    x = torch.empty(n, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), max_reps=20)
    return 2 * n / (ms * 1e-3)


def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 product on random data."""
    n = 8192 if DEV == "cuda" else 512
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, warmup=3, max_reps=10)
    return 2 * n**3 / (ms * 1e-3)


# ----------------------------------------------------------------------------- correctness
def err(x, ref) -> float:
    return float((x.detach().double() - ref.detach().double()).abs().max()) if x.numel() else 0.0


def rule(name, k, ref, plain, margin, log) -> bool:
    """kernel error vs float64 <= plain-PyTorch (fp32) error + margin * max(1, |ref|); no NaN."""
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    e, p = err(k, ref), err(plain, ref)
    ok = bool(not torch.isnan(k).any()) and e <= p + margin * scale
    log.append(f"{name}: err {e:.2e} plain {p:.2e} {'ok' if ok else 'FAIL'}")
    return ok


def check_entropy(n, v, log) -> bool:
    ok = True
    for dtype, margin, gmargin in ((torch.float32, 2e-5, 2e-5), (torch.bfloat16, 2e-5, 8e-3)):
        x = (torch.randn(n, v, device=DEV) * 4).to(dtype)
        tok = torch.randint(0, v, (n,), device=DEV)
        ge, gl = torch.randn(n, device=DEV), torch.randn(n, device=DEV)
        xs = {"k": x.clone().requires_grad_(), "d": x.double().requires_grad_(),
              "p": x.float().clone().requires_grad_()}
        outs = {}
        for key, t in xs.items():
            f = (lambda a, b, c: K.entropy_logprob(a, b, temperature=c, backend="triton")) if key == "k" \
                else (lambda a, b, c: entropy_logprob_naive(a, b, c))
            ent, lp, lse = f(t, tok, 0.9)
            ((ent * ge.to(ent)).sum() + (lp * gl.to(lp)).sum()).backward()
            outs[key] = (ent, lp, lse, t.grad)
        for i, lab in enumerate(("entropy", "logprob", "lse")):
            ok &= rule(f"entropy_logprob {dtype} {lab}", outs["k"][i], outs["d"][i], outs["p"][i], margin, log)
        ok &= rule(f"entropy_logprob {dtype} grad", outs["k"][3], outs["d"][3], outs["p"][3].to(dtype), gmargin, log)
    return ok


def check_omniopd(n, v, log) -> bool:
    x = (torch.randn(n, v, device=DEV) * 3).bfloat16()
    r = (x.float() + torch.randn(n, v, device=DEV) * 0.3).bfloat16()
    tok = torch.randint(0, v, (n,), device=DEV)
    km = torch.rand(n, device=DEV) > 0.5
    w = torch.where(km, 0.0, torch.rand(n, device=DEV))
    xk, xd, xp = x.clone().requires_grad_(), x.double().requires_grad_(), x.float().clone().requires_grad_()
    lk = K.omniopd_loss(xk, r, tok, w, km, 0.3, backend="triton")
    ld = omniopd_loss_naive(xd, r.double(), tok, w.double(), km, 0.3)
    lp = omniopd_loss_naive(xp, r.float(), tok, w, km, 0.3)
    for t in (lk, ld, lp):
        t.backward()
    ok = rule("omniopd_loss bf16 loss", lk, ld, lp, 2e-5 * n, log)
    return ok & rule("omniopd_loss bf16 grad", xk.grad, xd.grad, xp.grad.bfloat16(), 8e-3, log)


def _lin(n, v, d, dtype, ref=False):
    h = (torch.randn(n, d, device=DEV) * 2).to(dtype)
    w = (torch.randn(v, d, device=DEV) / d**0.5 * 3).to(dtype)
    return h, w


def check_linear(n, v, d, log) -> bool:
    return all([_check_linear(n, v, d, log, backend) for backend in ("triton", "triton_tiles")])


def _check_linear(n, v, d, log, backend) -> bool:
    ok = True
    _linear_tiles.BWD_CHUNK_BYTES = max(1, n * v * 2 // 3)  # force 3+ backward row chunks
    log.append(f"-- linear backend: {backend}")
    try:
        for dtype, margin, gmargin in ((torch.float32, 2e-5, 2e-5), (torch.bfloat16, 2e-5, 1e-2)):
            h, w = _lin(n, v, d, dtype)
            tok = torch.randint(0, v, (n,), device=DEV)
            ge, gl = torch.randn(n, device=DEV), torch.randn(n, device=DEV)
            res = {}
            for key, cast in (("k", None), ("d", torch.float64), ("p", torch.float32)):
                hh = (h if cast is None else h.to(cast)).clone().requires_grad_()
                ww = (w if cast is None else w.to(cast)).clone().requires_grad_()
                if key == "k":
                    ent, lp, lse = K.linear_entropy_logprob(hh, ww, tok, temperature=1.1, backend=backend)
                else:
                    ent, lp, lse = linear_entropy_logprob_naive(hh, ww, tok, None, 1.1)
                ((ent * ge.to(ent)).sum() + (lp * gl.to(lp)).sum()).backward()
                res[key] = (ent, lp, lse, hh.grad, ww.grad)
            for i, lab in enumerate(("entropy", "logprob", "lse")):
                ok &= rule(f"linear_entropy_logprob {dtype} {lab}", res["k"][i], res["d"][i], res["p"][i], margin, log)
            for i, lab in ((3, "d_hidden"), (4, "d_weight")):
                ok &= rule(f"linear_entropy_logprob {dtype} {lab}", res["k"][i], res["d"][i], res["p"][i].to(dtype),
                           gmargin, log)
            # fused loss with both heads
            rh = (h.float() + 0.3 * torch.randn_like(h, dtype=torch.float32)).to(dtype)
            rw = (w.float() + 0.05 * torch.randn_like(w, dtype=torch.float32)).to(dtype)
            km = torch.rand(n, device=DEV) > 0.5
            wt = torch.where(km, 0.0, torch.rand(n, device=DEV))
            res = {}
            for key, cast in (("k", None), ("d", torch.float64), ("p", torch.float32)):
                hh = (h if cast is None else h.to(cast)).clone().requires_grad_()
                ww = (w if cast is None else w.to(cast)).clone().requires_grad_()
                if key == "k":
                    loss = K.linear_omniopd_loss(hh, ww, rh, rw, tok, wt, km, 0.25, backend=backend)
                else:
                    loss = linear_omniopd_loss_naive(hh, ww, rh.to(cast), rw.to(cast), tok, wt.to(cast), km, 0.25)
                loss.backward()
                res[key] = (loss, hh.grad, ww.grad)
            ok &= rule(f"linear_omniopd_loss {dtype} loss", res["k"][0], res["d"][0], res["p"][0], margin * n, log)
            for i, lab in ((1, "d_hidden"), (2, "d_weight")):
                ok &= rule(f"linear_omniopd_loss {dtype} {lab}", res["k"][i], res["d"][i], res["p"][i].to(dtype),
                           gmargin, log)
    finally:
        _linear_tiles.BWD_CHUNK_BYTES = 1 << 29
    return ok


def check_forks(log) -> bool:
    b, t = 48, 700
    ent = torch.rand(b, t, device=DEV).mul(8).round().div(8)  # many ties
    valid = torch.rand(b, t, device=DEV) > 0.03
    got = K.select_forks(ent, valid, 9, 37, min_entropy=0.2, backend="triton").cpu()
    ref = select_forks_naive(ent.cpu(), valid.cpu(), 9, 37, 0.2)
    ok = torch.equal(got, ref)
    log.append(f"select_forks: {'ok' if ok else 'FAIL'}")
    return ok


def check_cosine(log) -> bool:
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(5, 37, 391, device=DEV).to(dtype)
        b = torch.randn(5, 23, 391, device=DEV).to(dtype)
        a[0, 0] = 0
        k = K.cosine_similarity(a, b, backend="triton")
        ok &= rule(f"cosine {dtype}", k, cosine_similarity_naive(a.double(), b.double()),
                   cosine_similarity_naive(a.float(), b.float()), 1e-5, log)
    return ok


# ----------------------------------------------------------------------------- timing
class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, op, impl, ms=None, gib=None, floor_ms=None, ours_ms=None, note=""):
        self.rows.append((op, impl, ms, gib, floor_ms, ours_ms, note))

    def markdown(self) -> str:
        out = ["| op | implementation | median ms | peak extra GiB | floor ms | × floor | ours ÷ this | note |",
               "|---|---|---|---|---|---|---|---|"]
        f = lambda x, p=2: "—" if x is None else f"{x:.{p}f}"
        for op, impl, ms, gib, floor, ours, note in self.rows:
            xf = None if ms is None or not floor else ms / floor
            rel = None if ms is None or ours is None else ours / ms
            out.append(f"| {op} | {impl} | {f(ms)} | {f(gib)} | {f(floor)} | {f(xf)} | {f(rel)} | {note} |")
        return "\n".join(out)


def measure(table: Table, op: str, impls: dict, floor_ms: float | None, ok: bool, deadline: float,
            per_impl_s: float = 25.0):
    """Time each implementation (first one is ours); one failure or OOM never loses the others."""
    ours = None
    for name, fn in impls.items():
        if not ok:
            table.add(op, name, note="not timed: correctness check failed")
            continue
        if time.time() > deadline:
            table.add(op, name, note="skipped: time budget spent")
            continue
        t0 = time.time()
        try:
            ms = time_ms(fn, budget_s=min(1.5, per_impl_s / 4))
            gib = peak_extra_gib(fn)
            if ours is None and name.startswith("ours"):
                ours = ms
            note = "" if time.time() - t0 < per_impl_s else f"slow: {time.time() - t0:.0f}s"
            table.add(op, name, ms, gib, floor_ms, ours, note)
        except torch.cuda.OutOfMemoryError:
            table.add(op, name, note="CUDA OOM")
        except Exception as e:  # noqa: BLE001 - one peer failing must not lose the table
            table.add(op, name, note=f"error: {type(e).__name__}: {str(e)[:80]}")
            traceback.print_exc()
        finally:
            if DEV == "cuda":
                torch.cuda.empty_cache()


def liger():
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        return LigerFusedLinearCrossEntropyLoss, LigerFusedLinearGRPOLoss
    except Exception as e:  # noqa: BLE001
        print(f"[gpu_check] Liger-Kernel not importable ({type(e).__name__}: {e}); its rows are skipped")
        return None, None


def grads_of(loss_fn, *leaves):
    def run():
        loss = loss_fn()
        return torch.autograd.grad(loss, leaves)
    return run


def fp32_entropy_lp(x, t):
    """What eager user code does: upcast, log_softmax, entropy, gather."""
    logp = torch.log_softmax(x.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1), logp.gather(1, t[:, None]).squeeze(1)


def bench_logits(table, *, n, v, d, bw, rate, checks, deadline, small, comp, tok):
    x = torch.randn(n, v, device=DEV, dtype=torch.bfloat16) * 3
    compiled = comp(fp32_entropy_lp)
    measure(table, "entropy_logprob fwd (bf16 logits)", {
        "ours (triton)": lambda: K.entropy_logprob(x, tok),
        "eager": lambda: fp32_entropy_lp(x, tok),
        "torch.compile": lambda: compiled(x, tok),
    }, n * v * 2 / bw * 1e3, checks["entropy_logprob"], deadline)
    r = (x.float() + 0.3).bfloat16()
    km = torch.rand(n, device=DEV) > 0.5
    wt = torch.where(km, 0.0, torch.rand(n, device=DEV))
    xg = x.requires_grad_()  # the same storage: no second [N, V] copy
    eager_loss = lambda xx: omniopd_loss_naive(xx.float(), r.float(), tok, wt, km, 0.1)
    c_loss = comp(eager_loss)
    measure(table, "omniopd_loss fwd+bwd (bf16 logits)", {
        "ours (triton)": grads_of(lambda: K.omniopd_loss(xg, r, tok, wt, km, 0.1), xg),
        "eager": grads_of(lambda: eager_loss(xg), xg),
        "torch.compile": grads_of(lambda: c_loss(xg), xg),
    }, 5 * n * v * 2 / bw * 1e3, checks["omniopd_loss"], deadline)


def bench_linear(table, *, n, v, d, bw, rate, checks, deadline, small, comp, tok):
    mm_ms = 2 * n * v * d / rate * 1e3
    h = (torch.randn(n, d, device=DEV) * 2).bfloat16()
    w = (torch.randn(v, d, device=DEV) / d**0.5 * 3).bfloat16()
    chunk = 64 if small else 2048
    c_chunk = comp(lambda hc, tc: fp32_entropy_lp(hc @ w.T, tc))

    def chunked_compiled():
        outs = [c_chunk(h[s:s + chunk], tok[s:s + chunk]) for s in range(0, n, chunk)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    with torch.no_grad():
        measure(table, "linear_entropy_logprob fwd", {
            "ours (triton, cuBLAS fp32 chunks + row kernel)": lambda: K.linear_entropy_logprob(h, w, tok),
            "ours (triton_tiles: tl.dot tiles)": lambda: K.linear_entropy_logprob(h, w, tok, backend="triton_tiles"),
            "eager": lambda: fp32_entropy_lp(h @ w.T, tok),
            f"torch.compile ({chunk}-token chunks)": chunked_compiled,
        }, mm_ms, checks["linear"], deadline)

    flce, grpo = liger()
    hg, wg = h.clone().requires_grad_(), w.clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy
    impls = {
        "ours (triton, -logprob of linear_entropy_logprob)": grads_of(
            lambda: -K.linear_entropy_logprob(hg, wg, tok)[1].sum(), hg, wg),
        "ours (same, triton_tiles)": grads_of(
            lambda: -K.linear_entropy_logprob(hg, wg, tok, backend="triton_tiles")[1].sum(), hg, wg),
        "eager": grads_of(lambda: ce((hg @ wg.T).float(), tok, reduction="sum"), hg, wg),
    }
    liger_ce = flce(reduction="sum") if flce is not None else None
    if liger_ce is not None:
        impls["Liger FLCE"] = grads_of(lambda: liger_ce(wg, hg, tok), hg, wg)
    measure(table, "linear CE fwd+bwd", impls, 3 * mm_ms, checks["linear"], deadline)

    rh = (h.float() + 0.3 * torch.randn_like(h, dtype=torch.float32)).bfloat16()
    rw = (w.float() + 0.05 * torch.randn_like(w, dtype=torch.float32)).bfloat16()
    km = torch.rand(n, device=DEV) > 0.5
    wt = torch.where(km, 0.0, torch.rand(n, device=DEV))
    c_omni = comp(lambda hc, rc, tc, wc, kc: omniopd_loss_naive((hc @ wg.T).float(), (rc @ rw.T).float(), tc, wc, kc,
                                                                0.1))

    def chunked_compiled_omni():
        total = 0.0
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            total = total + torch.utils.checkpoint.checkpoint(c_omni, hg[sl], rh[sl], tok[sl], wt[sl], km[sl],
                                                              use_reentrant=False)
        return total

    impls = {
        "ours (triton)": grads_of(lambda: K.linear_omniopd_loss(hg, wg, rh, rw, tok, wt, km, 0.1), hg, wg),
        "ours (per-token path: linear_logprob_kl, then sum)": grads_of(
            lambda: K.linear_omniopd_loss(hg, wg, rh, rw, tok, wt, km, 0.1, reduction="none").sum(), hg, wg),
        "eager": grads_of(lambda: omniopd_loss_naive((hg @ wg.T).float(), (rh @ rw.T).float(), tok, wt, km, 0.1),
                          hg, wg),
        f"torch.compile ({chunk}-token chunks + checkpoint)": grads_of(chunked_compiled_omni, hg, wg),
    }
    if liger_ce is not None:
        impls["Liger FLCE (CE only: the target's yardstick)"] = grads_of(lambda: liger_ce(wg, hg, tok), hg, wg)
    if grpo is not None:
        bsz = 4 if small else 16
        g_loss = grpo(beta=0.1, chunk_size=8, use_ref_model=True)
        adv = torch.randn(bsz, device=DEV)
        mask = torch.ones(bsz, n // bsz, device=DEV)

        def grpo_loss():
            out = g_loss(hg.view(bsz, n // bsz, d), wg, tok.view(bsz, -1), mask, adv, ref_input=rh.view(bsz, -1, d),
                         ref_weight=rw)
            return out[0] if isinstance(out, (tuple, list)) else out

        impls["Liger fused GRPO (PG + k3-KL, chunk 8)"] = grads_of(grpo_loss, hg, wg)
    measure(table, "linear_omniopd_loss fwd+bwd (both heads)", impls, 5 * mm_ms, checks["linear"], deadline,
            per_impl_s=40.0)


def bench_small_ops(table, *, n, v, d, bw, rate, checks, deadline, small, comp, tok):
    b, t = (8, 512) if small else (256, 8192)
    ent = torch.rand(b, t, device=DEV)
    valid = torch.rand(b, t, device=DEV) > 0.01
    measure(table, f"select_forks [{b},{t}] M=8 C=32", {
        "ours (triton)": lambda: K.select_forks(ent, valid, 8, 32),
        "torch path": lambda: K.select_forks(ent, valid, 8, 32, backend="torch"),
        "torch.topk(k=8) (yardstick)": lambda: torch.topk(ent, 8, dim=1),
    }, b * t * 5 / bw * 1e3, checks["select_forks"], deadline)
    a = torch.randn(512, 8, 384, device=DEV)
    bb = torch.randn(512, 16, 384, device=DEV)
    measure(table, "cosine_similarity [512,8|16,384] fp32", {
        "ours (triton)": lambda: K.cosine_similarity(a, bb),
        "eager (normalize + bmm)": lambda: cosine_similarity_naive(a, bb),
    }, (a.numel() + bb.numel() + 512 * 8 * 16) * 4 / bw * 1e3, checks["cosine_similarity"], deadline)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny shapes (smoke test, also on CPU)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for the timings")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile peers (slow on CPU)")
    args = ap.parse_args()
    start = time.time()
    card = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    slug = card.lower().replace("nvidia", "").strip().replace(" ", "_") or "gpu"
    print(f"[gpu_check] device: {card}; torch {torch.__version__}", flush=True)
    torch.manual_seed(0)

    # 1. correctness
    log: list[str] = []
    checks = {}
    cn, cv, cd = (37, 1009, 67) if args.small else (513, 32003, 512)
    for name, fn in (("entropy_logprob", lambda: check_entropy(cn, cv, log)),
                     ("omniopd_loss", lambda: check_omniopd(cn, cv, log)),
                     ("linear", lambda: check_linear(cn if args.small else 391, cv, cd, log)),
                     ("select_forks", lambda: check_forks(log)),
                     ("cosine_similarity", lambda: check_cosine(log))):
        try:
            checks[name] = fn()
        except Exception as e:  # noqa: BLE001
            checks[name] = False
            log.append(f"{name}: error {type(e).__name__}: {e}")
            traceback.print_exc()
        if DEV == "cuda":
            torch.cuda.empty_cache()
    print("\n".join("  " + line for line in log), flush=True)
    print(f"[gpu_check] checks done in {time.time() - start:.0f}s: {checks}", flush=True)

    # 2. floors
    bw, rate = copy_bandwidth(), matmul_rate()
    print(f"[gpu_check] copy {bw / 1e12:.2f} TB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s", flush=True)

    # 3. timings at DESIGN §4 shapes; each section in its own function so its tensors die with it
    n, v, d = (256, 4099, 128) if args.small else (16384, 151936, 2048)
    ctx = dict(n=n, v=v, d=d, bw=bw, rate=rate, checks=checks, deadline=start + args.budget_s, small=args.small,
               comp=(lambda f: f) if args.no_compile else (lambda f: torch.compile(f, dynamic=False)),
               tok=torch.randint(0, v, (n,), device=DEV))
    table = Table()
    for section in (bench_logits, bench_linear, bench_small_ops):
        try:
            section(table, **ctx)
        except torch.cuda.OutOfMemoryError:
            table.add(section.__name__, "setup", note="CUDA OOM")
        except Exception as e:  # noqa: BLE001
            table.add(section.__name__, "setup", note=f"error: {type(e).__name__}: {str(e)[:80]}")
            traceback.print_exc()
        if DEV == "cuda":
            torch.cuda.empty_cache()

    header = (f"# omniopd_kernels on {card}\n\ntorch {torch.__version__}; copy bandwidth {bw / 1e12:.2f} TB/s "
              f"(read+write), bf16 matmul {rate / 1e12:.0f} TFLOP/s; N={n}, V={v}, D={d}; "
              f"floors: bytes / copy bandwidth or FLOPs / matmul rate (DESIGN.md §4). "
              f"'ours ÷ this' > 1 means ours is slower.\n\nChecks: "
              + ", ".join(f"{k} {'ok' if ok else 'FAILED'}" for k, ok in checks.items())
              + f"\n\n{table.markdown()}\n\n<details><summary>check log</summary>\n\n"
              + "\n".join(f"- {line}" for line in log) + "\n</details>\n")
    print(header)
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"gpu_{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header)
    print(f"[gpu_check] wrote {out} after {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
