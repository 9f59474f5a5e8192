"""Benchmark cases for `omniopd_kernels`: one setup per op, the same inputs for every implementation.

`make_case(op, impl, shape, device)` returns a `Case` whose `run()` does the timed work (forward, or
forward+backward for the losses) and returns the outputs that `max_rel_err` compares with float64.
Used by bench/test_bench_kernels.py, bench/gpu_check.py and, in a fresh process, bench/cpu_peak.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from harness import import_kernels

K = import_kernels()
from omniopd_kernels.cosine_similarity import cosine_similarity_naive  # noqa: E402
from omniopd_kernels.entropy_logprob import entropy_logprob_naive  # noqa: E402
from omniopd_kernels.omniopd_loss import omniopd_loss_naive  # noqa: E402
from omniopd_kernels.select_forks import select_forks_naive  # noqa: E402

OPS = ("entropy_logprob", "linear_entropy_logprob", "linear_cross_entropy", "omniopd_loss", "linear_omniopd_loss",
       "select_forks", "cosine_similarity")
# Peers first, ours last, so ours can report its ratio to every peer measured before it. `triton_tiles` and
# `triton_per_token` exist for the fused-linear ops only (the other Triton design; reduction="none").
IMPLS = ("eager", "compile", "liger", "torch", "triton_tiles", "triton_per_token", "triton")
OURS = ("torch", "triton_tiles", "triton_per_token", "triton")
_LINEAR = ("linear_entropy_logprob", "linear_cross_entropy", "linear_omniopd_loss")

# Timing shapes: docs/design.md §4 on a GPU; small on CPU so `pytest bench/` runs in a few minutes.
_SHAPES = {  # op: (GPU shape, CPU shape)
    "entropy_logprob": ({"N": 16384, "V": 151936}, {"N": 1024, "V": 16384}),
    "linear_entropy_logprob": ({"N": 16384, "V": 151936, "D": 2048}, {"N": 512, "V": 16384, "D": 256}),
    "linear_cross_entropy": ({"N": 16384, "V": 151936, "D": 2048}, {"N": 256, "V": 8192, "D": 128}),
    "omniopd_loss": ({"N": 16384, "V": 151936}, {"N": 512, "V": 16384}),
    "linear_omniopd_loss": ({"N": 16384, "V": 151936, "D": 2048}, {"N": 256, "V": 8192, "D": 128}),
    "select_forks": ({"B": 256, "T": 8192, "M": 8, "C": 32}, {"B": 64, "T": 2048, "M": 8, "C": 32}),
    "cosine_similarity": ({"B": 512, "K": 8, "M": 16, "E": 384}, {"B": 64, "K": 8, "M": 16, "E": 384}),
}


def bench_shape(op: str, device: str) -> dict:
    return dict(_SHAPES[op][0 if device == "cuda" else 1])


class Skip(Exception):
    """This implementation does not exist or cannot run here; the message says why."""


@dataclass
class Case:
    run: Callable[[], object]
    reference: Callable[[], object] | None = None  # float64 ground truth (same structure as run())
    floor_bytes: float = 0.0
    floor_flops: float = 0.0
    tol: float = 2e-3  # max abs error allowed, relative to max(1, |ref|)
    inputs: dict = field(default_factory=dict)


def _grads(loss_fn, *leaves):
    def run():
        loss = loss_fn()
        return (loss.detach(), *torch.autograd.grad(loss, leaves))
    return run


def _compile(fn):
    if os.environ.get("OMNIOPD_BENCH_COMPILE", "1" if torch.cuda.is_available() else "0") != "1":
        raise Skip("torch.compile peer is opt-in on CPU (inductor's C++ build takes minutes on 2 cores): "
                   "set OMNIOPD_BENCH_COMPILE=1")
    return torch.compile(fn, dynamic=False)


def _liger(name: str):
    """Liger-Kernel's loss class `name` (FLCE, or the fused GRPO loss as a yardstick)."""
    if not torch.cuda.is_available():
        raise Skip("Liger-Kernel runs on CUDA only")
    try:
        if name == "grpo":
            from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss as cls
        else:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss as cls
    except Exception as e:  # noqa: BLE001 - ImportError, or a Liger built for another torch
        raise Skip(f"Liger-Kernel not importable ({type(e).__name__}: {e})") from e
    return cls


def _ours(impl: str, op: str, device: str, interpret: bool) -> str:
    """The `backend=` of one of our implementations; Skip where it does not exist or is not timed here."""
    if impl in ("triton_tiles", "triton_per_token") and op not in _LINEAR:
        raise Skip(f"{impl} exists for the fused-linear ops only")
    if impl == "triton_per_token" and op != "linear_omniopd_loss":
        raise Skip("triton_per_token is linear_omniopd_loss(reduction='none') summed")
    if impl.startswith("triton") and device != "cuda" and not interpret:
        raise Skip("Triton is timed on CUDA only (the CPU interpreter is a correctness tool)")
    return "triton" if impl == "triton_per_token" else impl


def fp32_entropy_lp(x, tok):
    """What eager user code does: upcast, log_softmax, entropy, gather."""
    logp = torch.log_softmax(x.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1), logp.gather(1, tok[:, None]).squeeze(1)


def make_case(op: str, impl: str, shape: dict, device: str = "cpu", interpret: bool = False) -> Case:
    """The case of `impl` of `op` at `shape`; `interpret` also builds Triton cases on CPU (smoke runs)."""
    if impl in OURS:
        be = _ours(impl, op, device, interpret)
    g = torch.Generator(device=device).manual_seed(0)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    n, v, d = shape.get("N", 0), shape.get("V", 0), shape.get("D", 0)
    # In place, so building inputs leaves no transient copies behind (the CPU peak probe relies on it).
    rnd = lambda *s, dtype=dt, scale=1.0: torch.randn(*s, generator=g, device=device, dtype=dtype).mul_(scale)
    tok = torch.randint(0, max(v, 1), (max(n, 1),), generator=g, device=device)[:n]

    if op == "entropy_logprob":
        x = rnd(n, v, scale=3.0)
        ref = lambda: entropy_logprob_naive(x.double(), tok)[:2]
        nbytes = x.numel() * x.element_size()
        if impl in OURS:
            return Case(lambda: K.entropy_logprob(x, tok, backend=be)[:2], ref, nbytes)
        if impl == "eager":
            return Case(lambda: fp32_entropy_lp(x, tok), ref, nbytes)
        if impl == "compile":
            f = _compile(fp32_entropy_lp)
            return Case(lambda: f(x, tok), ref, nbytes)
        raise Skip("Liger-Kernel has no entropy op")

    if op in ("linear_entropy_logprob", "linear_cross_entropy"):
        h = rnd(n, d, scale=2.0)
        w = rnd(v, d, scale=3.0 / d**0.5)
        flops = 2.0 * n * v * d
        if op == "linear_entropy_logprob":  # forward only, as the trainer's no-grad entropy pass
            ref = lambda: entropy_logprob_naive(h.double() @ w.double().T, tok)[:2]
            if impl in OURS:
                return Case(torch.no_grad()(lambda: K.linear_entropy_logprob(h, w, tok, backend=be)[:2]), ref,
                            floor_flops=flops)
            if impl == "eager":
                return Case(torch.no_grad()(lambda: fp32_entropy_lp(h @ w.T, tok)), ref, floor_flops=flops)
            if impl == "compile":
                f = _compile(lambda hh, tt: fp32_entropy_lp(hh @ w.T, tt))
                chunk = 2048

                @torch.no_grad()
                def run():
                    outs = [f(h[s:s + chunk], tok[s:s + chunk]) for s in range(0, n, chunk)]
                    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
                return Case(run, ref, floor_flops=flops)
            raise Skip("Liger-Kernel has no entropy op")
        # linear_cross_entropy: -Σ log π(y), forward + backward (Liger's fused linear cross-entropy)
        hg, wg = h.clone().requires_grad_(), w.clone().requires_grad_()

        def ref():
            h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
            return _grads(lambda: torch.nn.functional.cross_entropy(h64 @ w64.T, tok, reduction="sum"), h64, w64)()
        if impl in OURS:
            run = _grads(lambda: -K.linear_entropy_logprob(hg, wg, tok, backend=be)[1].sum(), hg, wg)
        elif impl == "eager":
            run = _grads(lambda: torch.nn.functional.cross_entropy((hg @ wg.T).float(), tok, reduction="sum"), hg, wg)
        elif impl == "liger":
            loss = _liger("flce")(reduction="sum")
            run = _grads(lambda: loss(wg, hg, tok), hg, wg)
        else:
            raise Skip("no compiled fused-linear CE peer (torch.compile of eager CE materializes [N, V])")
        return Case(run, ref, floor_flops=3 * flops, tol=2e-2 if dt == torch.bfloat16 else 2e-3)

    if op in ("omniopd_loss", "linear_omniopd_loss"):
        km = torch.rand(n, generator=g, device=device) > 0.5
        wt = torch.where(km, 0.0, torch.rand(n, generator=g, device=device))
        beta = 0.1
        if op == "omniopd_loss":
            x = rnd(n, v, scale=3.0)
            r = (x.float() + torch.randn(n, v, generator=g, device=device) * 0.3).to(dt)
            xg = x.requires_grad_()

            def ref():
                x64 = x.detach().double().requires_grad_()
                return _grads(lambda: omniopd_loss_naive(x64, r.double(), tok, wt.double(), km, beta), x64)()
            nbytes = 5 * x.numel() * x.element_size()  # read z, r; read z, r, write dz
            eager = lambda: omniopd_loss_naive(xg.float(), r.float(), tok, wt, km, beta)
            if impl in OURS:
                return Case(_grads(lambda: K.omniopd_loss(xg, r, tok, wt, km, beta, backend=be), xg), ref, nbytes)
            if impl == "eager":
                return Case(_grads(eager, xg), ref, nbytes)
            if impl == "compile":
                f = _compile(eager)
                return Case(_grads(f, xg), ref, nbytes)
            raise Skip("Liger-Kernel has no full-vocabulary KL-to-reference + weighted NLL op on logits")
        h = rnd(n, d, scale=2.0)
        w = rnd(v, d, scale=3.0 / d**0.5)
        rh = (h.float() + torch.randn(n, d, generator=g, device=device) * 0.3).to(dt)
        rw = (w.float() + torch.randn(v, d, generator=g, device=device) * 0.05).to(dt)
        hg, wg = h.clone().requires_grad_(), w.clone().requires_grad_()

        def ref():
            h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
            return _grads(lambda: omniopd_loss_naive(h64 @ w64.T, rh.double() @ rw.double().T, tok, wt.double(), km,
                                                     beta), h64, w64)()
        flops = 5 * 2.0 * n * v * d
        tol = 2e-2 if dt == torch.bfloat16 else 2e-3
        eager = lambda: omniopd_loss_naive((hg @ wg.T).float(), (rh @ rw.T).float(), tok, wt, km, beta)
        if impl in OURS:
            run = _grads(lambda: K.linear_omniopd_loss(hg, wg, rh, rw, tok, wt, km, beta, backend=be), hg, wg)
            return Case(run, ref, floor_flops=flops, tol=tol)
        if impl == "eager":
            return Case(_grads(eager, hg, wg), ref, floor_flops=flops, tol=tol)
        if impl == "compile":
            f = _compile(lambda hc, rc, tc, wc, kc: omniopd_loss_naive((hc @ wg.T).float(), (rc @ rw.T).float(), tc,
                                                                       wc, kc, beta))
            chunk = 2048

            def loss():
                total = 0.0
                for s in range(0, n, chunk):
                    sl = slice(s, s + chunk)
                    total = total + torch.utils.checkpoint.checkpoint(f, hg[sl], rh[sl], tok[sl], wt[sl], km[sl],
                                                                      use_reentrant=False)
                return total
            return Case(_grads(loss, hg, wg), ref, floor_flops=flops, tol=tol)
        if impl == "liger":  # a different loss (PG + k3 KL, chunk 8): a yardstick, no float64 check
            bsz = 16 if n % 16 == 0 else 1
            grpo = _liger("grpo")(beta=beta, chunk_size=8, use_ref_model=True)
            adv = torch.randn(bsz, generator=g, device=device)
            mask = torch.ones(bsz, n // bsz, device=device)

            def grpo_loss():
                out = grpo(hg.view(bsz, n // bsz, d), wg, tok.view(bsz, -1), mask, adv,
                           ref_input=rh.view(bsz, -1, d), ref_weight=rw)
                return out[0] if isinstance(out, (tuple, list)) else out
            return Case(_grads(grpo_loss, hg, wg), None, floor_flops=flops)
        raise Skip(f"no {impl} peer of the fused OmniOPD loss")

    if op == "select_forks":
        b, t = shape["B"], shape["T"]
        ent = torch.rand(b, t, generator=g, device=device).mul(16).round()  # ties
        valid = torch.rand(b, t, generator=g, device=device) > 0.02
        m, c = shape.get("M", 8), shape.get("C", 32)
        ref = lambda: select_forks_naive(ent.cpu(), valid.cpu(), m, c)
        if impl in OURS:
            return Case(lambda: K.select_forks(ent, valid, m, c, backend=be), ref, ent.numel() * 5, tol=0.0)
        if impl == "eager":  # the yardstick of the target: a plain top-k over the same entropies
            return Case(lambda: torch.topk(ent, m, dim=1), None, ent.numel() * 5)
        raise Skip("no compiled/Liger peer for greedy fork selection")

    if op == "cosine_similarity":
        b, k, m, e = shape["B"], shape["K"], shape["M"], shape["E"]
        a = torch.randn(b, k, e, generator=g, device=device)
        bb = torch.randn(b, m, e, generator=g, device=device)
        ref = lambda: cosine_similarity_naive(a.double(), bb.double())
        nbytes = (a.numel() + bb.numel() + b * k * m) * 4
        if impl in OURS:
            return Case(lambda: K.cosine_similarity(a, bb, backend=be), ref, nbytes, tol=1e-5)
        if impl == "eager":
            return Case(lambda: cosine_similarity_naive(a, bb), ref, nbytes, tol=1e-5)
        if impl == "compile":
            f = _compile(cosine_similarity_naive)
            return Case(lambda: f(a, bb), ref, nbytes, tol=1e-5)
        raise Skip("Liger-Kernel's cosine op is a loss, not a similarity matrix")
    raise ValueError(f"unknown op {op!r}")


def max_rel_err(out, ref) -> float:
    """Largest |out - ref| / max(1, max|ref|) over matching tensors of two (nested) outputs."""
    if isinstance(out, (tuple, list)):
        return max((max_rel_err(o, r) for o, r in zip(out, ref)), default=0.0)
    if out is None or ref is None:
        return 0.0
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.dtype == torch.int64 or ref.dtype == torch.int64:
        return 0.0 if torch.equal(out.long(), ref.long()) else float("inf")
    if torch.isnan(out).any():
        return float("inf")
    return float((out - ref).abs().max()) / max(1.0, float(ref.abs().max()))
