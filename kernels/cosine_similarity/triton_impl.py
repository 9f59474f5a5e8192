"""Triton path: tiled a·bᵀ with the squared norms accumulated in the same loop over E."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import interpreting
from .naive import EPS


@triton.jit
def _cos_kernel(a_ptr, b_ptr, o_ptr, K, M, E, sab, sak, sbb, sbm, sob, sok, eps,
                UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    re = tl.arange(0, BLOCK_E)
    acc = tl.zeros([BLOCK_K, BLOCK_M], tl.float32)
    na = tl.zeros([BLOCK_K], tl.float32)
    nb = tl.zeros([BLOCK_M], tl.float32)
    for e0 in range(0, E, BLOCK_E):
        ce = e0 + re
        ta = tl.load(a_ptr + bi * sab + rk[:, None] * sak + ce[None, :],
                     mask=(rk[:, None] < K) & (ce[None, :] < E), other=0.0)
        tb = tl.load(b_ptr + bi * sbb + rm[:, None] * sbm + ce[None, :],
                     mask=(rm[:, None] < M) & (ce[None, :] < E), other=0.0)
        fa = ta.to(tl.float32)
        fb = tb.to(tl.float32)
        na += tl.sum(fa * fa, 1)
        nb += tl.sum(fb * fb, 1)
        if UPCAST:  # the interpreter's dot has no bf16; fp32 is exact for bf16 inputs anyway
            acc += tl.dot(fa, tl.trans(fb), input_precision=PREC)
        else:
            acc += tl.dot(ta, tl.trans(tb), input_precision=PREC)
    inv_a = 1.0 / tl.maximum(tl.sqrt(na), eps)
    inv_b = 1.0 / tl.maximum(tl.sqrt(nb), eps)
    out = acc * inv_a[:, None] * inv_b[None, :]
    tl.store(o_ptr + bi * sob + rk[:, None] * sok + rm[None, :], out, mask=(rk[:, None] < K) & (rm[None, :] < M))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    bsz, k, e = a.shape
    m = b.shape[1]
    out = torch.full((bsz, k, m), float("nan"), dtype=torch.float32, device=a.device)
    if out.numel() == 0:
        return out
    bk = 32 if interpreting() else min(64, max(16, triton.next_power_of_2(k)))
    bm = 32 if interpreting() else min(64, max(16, triton.next_power_of_2(m)))
    be = 64
    # fp32 inputs get full-precision dots (tf32 would cost ~1e-3 relative error).
    prec = "ieee" if a.dtype == torch.float32 or b.dtype == torch.float32 else "tf32"
    upcast = interpreting() or a.dtype != b.dtype or a.dtype not in (torch.bfloat16, torch.float16)
    grid = (bsz, triton.cdiv(k, bk), triton.cdiv(m, bm))
    _cos_kernel[grid](a, b, out, k, m, e, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                      out.stride(0), out.stride(1), EPS, UPCAST=upcast, PREC=prec,
                      BLOCK_K=bk, BLOCK_M=bm, BLOCK_E=be, num_warps=4)
    return out
