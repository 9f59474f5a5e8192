"""Triton path: one streaming pass per row with an online (max, sum, sum e*z) and a one-pass backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import interpreting, rowmajor


@triton.jit
def _online_update(m, s, t, z):
    """Fold a tile of scaled logits z into the running (max m, sum s = Σe^(z-m), t = Σe^(z-m)(z-m))."""
    m_new = tl.maximum(m, tl.max(z, 0))
    alpha = tl.exp(m - m_new)
    d = z - m_new
    e = tl.exp(d)
    # e == 0 covers masked lanes and -inf logits, whose e*d would be 0*(-inf) = nan.
    et = tl.where(e > 0, e * d, 0.0)
    # Re-centre t on the new max: Σe^(z-m')(z-m') = α(t + (m-m')s). Guarded while s == 0 (m = -inf).
    t = tl.where(s > 0, alpha * (t + (m - m_new) * s), 0.0) + tl.sum(et, 0)
    s = s * alpha + tl.sum(e, 0)
    return m_new, s, t


@triton.jit
def _fwd_kernel(x_ptr, tok_ptr, ent_ptr, lp_ptr, lse_ptr, m_ptr, N, V, stride_x, inv_tau,
                HAS_TOK: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK_V)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    t = tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        z = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_tau
        m, s, t = _online_update(m, s, t, z)
    log_s = tl.log(s)
    lse = m + log_s
    tl.store(lse_ptr + row, lse)
    tl.store(m_ptr + row, m)
    tl.store(m_ptr + N + row, log_s)
    tl.store(ent_ptr + row, log_s - t / s)
    if HAS_TOK:
        tok = tl.load(tok_ptr + row)
        tl.store(lp_ptr + row, tl.load(base + tok).to(tl.float32) * inv_tau - lse)


@triton.jit
def _bwd_kernel(x_ptr, tok_ptr, ent_ptr, lse_ptr, m_ptr, gent_ptr, glp_ptr, glse_ptr, dx_ptr,
                N, V, stride_x, stride_dx, inv_tau, HAS_TOK: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < V
    z = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32) * inv_tau
    # logp = (z - m) - log s: z - m is exact, so |z| ~ 1e4 loses nothing to the rounding of lse = m + log s.
    m = tl.load(m_ptr + row)
    log_s = tl.load(m_ptr + N + row)
    ent = tl.load(ent_ptr + row)
    g_ent = tl.load(gent_ptr + row)
    g_lse = tl.load(glse_ptr + row)
    logp = (z - m) - log_s
    p = tl.exp(logp)
    dz = -g_ent * tl.where(p > 0, p * (logp + ent), 0.0) + g_lse * p
    if HAS_TOK:
        g_lp = tl.load(glp_ptr + row)
        tok = tl.load(tok_ptr + row)
        dz += g_lp * (tl.where(cols == tok, 1.0, 0.0) - p)
    tl.store(dx_ptr + row * stride_dx + cols, (dz * inv_tau).to(dx_ptr.dtype.element_ty), mask=mask)


_FWD_CONFIGS = [triton.Config({"BLOCK_V": bv}, num_warps=w)
                for bv, w in ((2048, 8), (4096, 8), (8192, 8), (8192, 16), (16384, 16))]
_BWD_CONFIGS = [triton.Config({"BLOCK_V": bv}, num_warps=w) for bv, w in ((1024, 4), (2048, 8), (4096, 8))]
if interpreting():
    _fwd = _fwd_kernel
    _bwd = _bwd_kernel
else:
    _fwd = triton.autotune(_FWD_CONFIGS, key=["V", "HAS_TOK"])(_fwd_kernel)
    _bwd = triton.autotune(_BWD_CONFIGS, key=["V", "HAS_TOK"])(_bwd_kernel)
_INTERP_BLOCK = 256


def forward(logits: torch.Tensor, tokens: torch.Tensor | None, temperature: float):
    logits = rowmajor(logits)
    n, v = logits.shape
    # NaN-filled so that any row a kernel fails to write shows up in the tests.
    ent = torch.full((n,), float("nan"), dtype=torch.float32, device=logits.device)
    lse = torch.full_like(ent, float("nan"))
    mx = torch.full((2, n), float("nan"), dtype=torch.float32, device=logits.device)  # (max, log Σe^(z-max))
    lp = torch.full_like(ent, float("nan")) if tokens is not None else ent
    if n == 0:
        return ent, (lp if tokens is not None else None), lse, mx
    tok = tokens if tokens is not None else ent
    extra = {"BLOCK_V": _INTERP_BLOCK} if interpreting() else {}
    _fwd[(n,)](logits, tok, ent, lp, lse, mx, n, v, logits.stride(0), 1.0 / temperature,
               HAS_TOK=tokens is not None, **extra)
    return ent, (lp if tokens is not None else None), lse, mx


def backward(logits, tokens, temperature, ent, lse, mx, g_ent, g_lp, g_lse, out=None) -> torch.Tensor:
    """d(loss)/d(logits) written into `out` (a new NaN-filled tensor if None); mx: [2, N] (max, log-sum)."""
    logits = rowmajor(logits)
    n, v = logits.shape
    grad = torch.full_like(logits, float("nan")) if out is None else out
    mx = mx.contiguous()
    if n == 0:
        return grad
    zeros = torch.zeros(n, dtype=torch.float32, device=logits.device)
    g_ent = zeros if g_ent is None else g_ent.float().contiguous()
    g_lse = zeros if g_lse is None else g_lse.float().contiguous()
    has_tok = tokens is not None and g_lp is not None
    g_lp = g_lp.float().contiguous() if has_tok else zeros
    tok = tokens if has_tok else zeros
    if interpreting():
        _bwd[(n, triton.cdiv(v, _INTERP_BLOCK))](
            logits, tok, ent, lse, mx, g_ent, g_lp, g_lse, grad, n, v, logits.stride(0), grad.stride(0),
            1.0 / temperature, HAS_TOK=has_tok, BLOCK_V=_INTERP_BLOCK)
    else:
        grid = lambda meta: (n, triton.cdiv(v, meta["BLOCK_V"]))
        _bwd[grid](logits, tok, ent, lse, mx, g_ent, g_lp, g_lse, grad, n, v, logits.stride(0), grad.stride(0),
                   1.0 / temperature, HAS_TOK=has_tok)
    return grad
