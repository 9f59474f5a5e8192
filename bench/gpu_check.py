#!/usr/bin/env python3
"""One-shot GPU check of `omniopd_kernels` for a lent H100/H200 (self-contained, < 5 minutes).

1. Correctness: every Triton op (both Triton designs of the fused-linear ops) against its float64
   reference on the GPU (odd shapes, fp32 and bf16, several vocabulary splits and backward row
   chunks), by the tolerance rule of the tests (omniopd_kernels.testing).
2. Floors: device-to-device copy bandwidth and bf16 matmul rate, measured here (harness.py).
3. Timings at docs/design.md §4 shapes (N=16384, V=151936, D=2048, bf16) of every implementation in
   kernel_cases.py, the same setups `pytest bench/` times: ours vs eager PyTorch, torch.compile and
   Liger-Kernel (optional: `pip install --no-deps` its wheel first); median by `triton.testing.do_bench`
   (L2 flushed), peak extra memory, ratio to the floor. An op whose check failed gets no speed reported.

Prints one markdown table and writes it to bench/results/gpu_<card>.md (or --out).
Usage: python bench/gpu_check.py [--small] [--budget-s 270] [--out PATH] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DEVICE, REPO, cuda_peak_extra_bytes, floor_ms, import_kernels, time_ms  # noqa: E402
from harness import floors as measure_floors  # noqa: E402

K = import_kernels()
from kernel_cases import IMPLS, OPS, Skip, bench_shape, make_case  # noqa: E402

from omniopd_kernels import _linear_tiles  # noqa: E402
from omniopd_kernels.cosine_similarity import cosine_similarity_naive  # noqa: E402
from omniopd_kernels.entropy_logprob import entropy_logprob_naive  # noqa: E402
from omniopd_kernels.linear_entropy_logprob import linear_entropy_logprob_naive  # noqa: E402
from omniopd_kernels.linear_omniopd_loss import linear_omniopd_loss_naive  # noqa: E402
from omniopd_kernels.omniopd_loss import omniopd_loss_naive  # noqa: E402
from omniopd_kernels.select_forks import select_forks_naive  # noqa: E402
from omniopd_kernels.testing import close_rule  # noqa: E402

DEV = DEVICE
GiB = 1 << 30


# ----------------------------------------------------------------------------- correctness
def rule(name, k, ref, plain, margin, log) -> bool:
    """The kernels' tolerance rule (omniopd_kernels.testing), logged."""
    ok, account = close_rule(k, ref, plain, margin)
    log.append(f"{name}: {account} {'ok' if ok else 'FAIL'}")
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
LABELS = {"eager": "eager", "compile": "torch.compile", "liger": "Liger-Kernel", "torch": "ours (torch path)",
          "triton_tiles": "ours (triton_tiles: tl.dot tiles)",
          "triton_per_token": "ours (triton, reduction='none', then sum)", "triton": "ours (triton)"}
# Which correctness check vouches for each timed op.
CHECK_OF = {"entropy_logprob": "entropy_logprob", "linear_entropy_logprob": "linear", "linear_cross_entropy": "linear",
            "omniopd_loss": "omniopd_loss", "linear_omniopd_loss": "linear", "select_forks": "select_forks",
            "cosine_similarity": "cosine_similarity"}


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, op, impl, ms=None, gib=None, floor=None, note=""):
        self.rows.append((op, impl, ms, gib, floor, note))

    def markdown(self) -> str:
        ours = {op: ms for op, impl, ms, *_ in self.rows if impl == "triton" and ms is not None}
        out = ["| op | implementation | median ms | peak extra GiB | floor ms | × floor | ours ÷ this | note |",
               "|---|---|---|---|---|---|---|---|"]
        f = lambda x, p=2: "—" if x is None else f"{x:.{p}f}"
        for op, impl, ms, gib, floor, note in self.rows:
            xf = None if ms is None or not floor else ms / floor
            rel = None if ms is None or op not in ours else ours[op] / ms
            out.append(f"| {op} | {LABELS[impl]} | {f(ms)} | {f(gib)} | {f(floor)} | {f(xf)} | {f(rel)} | {note} |")
        return "\n".join(out)


def time_op(table: Table, op: str, shape: dict, floors: dict, ok: bool, deadline: float, small: bool) -> None:
    """Time every implementation of `op` that exists here; one failure or OOM never loses the others."""
    label = f"{op} {shape}"
    for impl in IMPLS:
        try:
            case = make_case(op, impl, shape, DEV, interpret=small)
        except Skip:
            continue
        except torch.cuda.OutOfMemoryError:
            table.add(label, impl, note="CUDA OOM in setup")
            continue
        try:
            if not ok:
                table.add(label, impl, note="not timed: correctness check failed")
            elif time.time() > deadline:
                table.add(label, impl, note="skipped: time budget spent")
            else:
                ms = time_ms(case.run)
                gib = cuda_peak_extra_bytes(case.run) / GiB if DEV == "cuda" else None
                table.add(label, impl, ms, gib, floor_ms(floors, case.floor_bytes, case.floor_flops))
        except torch.cuda.OutOfMemoryError:
            table.add(label, impl, note="CUDA OOM")
        except Exception as e:  # noqa: BLE001 - one peer failing must not lose the table
            table.add(label, impl, note=f"error: {type(e).__name__}: {str(e)[:80]}")
            traceback.print_exc()
        finally:
            del case
            if DEV == "cuda":
                torch.cuda.empty_cache()


def small_shape(shape: dict) -> dict:
    """--small: the bench shapes cut down so the Triton interpreter gets through them on a CPU."""
    cap = {"N": 64, "V": 1031, "D": 64, "B": 4, "T": 256}
    return {k: min(x, cap.get(k, x)) for k, x in shape.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny shapes (smoke test, also on CPU)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for the timings")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile peers (slow on CPU)")
    args = ap.parse_args()
    if args.no_compile:
        os.environ["OMNIOPD_BENCH_COMPILE"] = "0"
    elif DEV == "cuda" or args.small:
        os.environ.setdefault("OMNIOPD_BENCH_COMPILE", "1")
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
    floors = measure_floors()
    bw, rate = floors["copy_bytes_per_s"], floors["matmul_flops_per_s"]
    print(f"[gpu_check] copy {bw / 1e12:.2f} TB/s, {floors['matmul_dtype']} matmul {rate / 1e12:.1f} TFLOP/s",
          flush=True)

    # 3. timings: the bench setups (kernel_cases.py), one op at a time so its tensors die with it
    table = Table()
    for op in OPS:
        shape = bench_shape(op, "cuda")
        time_op(table, op, small_shape(shape) if args.small else shape, floors, checks[CHECK_OF[op]],
                start + args.budget_s, args.small)

    header = (f"# omniopd_kernels on {card}\n\ntorch {torch.__version__}; copy bandwidth {bw / 1e12:.2f} TB/s "
              f"(read+write), {floors['matmul_dtype']} matmul {rate / 1e12:.1f} TFLOP/s; "
              f"floors: bytes / copy bandwidth or FLOPs / matmul rate (docs/design.md §4). "
              f"'ours ÷ this' > 1 means ours (triton) is slower.\n\nChecks: "
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
