"""Triton path: one pass streams the student and reference rows together; one-pass backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import interpreting, rowmajor


@triton.jit
def _online_kl_update(m_z, s_z, m_r, s_r, u, z, r):
    """Running stats of student z and reference r (scaled logits) over vocabulary tiles.

    s_z = Σe^(z-m_z), s_r = Σe^(r-m_r), u = Σe^(r-m_r)((r-m_r) - (z-m_z)); then
    KL(q‖p) = u/s_r - log s_r + log s_z. Shifts by the running maxima keep every term O(1).
    """
    mz_new = tl.maximum(m_z, tl.max(z, 0))
    mr_new = tl.maximum(m_r, tl.max(r, 0))
    a_z = tl.exp(m_z - mz_new)
    a_r = tl.exp(m_r - mr_new)
    dz = z - mz_new
    dr = r - mr_new
    e_z = tl.exp(dz)
    e_r = tl.exp(dr)
    term = tl.where(e_r > 0, e_r * (dr - dz), 0.0)
    # Re-centre u on both new maxima (guarded while s_r == 0, i.e. before the first tile).
    u = tl.where(s_r > 0, a_r * (u + ((m_r - mr_new) + (mz_new - m_z)) * s_r), 0.0) + tl.sum(term, 0)
    s_z = s_z * a_z + tl.sum(e_z, 0)
    s_r = s_r * a_r + tl.sum(e_r, 0)
    return mz_new, s_z, mr_new, s_r, u


@triton.jit
def _fwd_kernel(x_ptr, r_ptr, tok_ptr, lp_ptr, kl_ptr, st_ptr, N, V, stride_x, stride_r, inv_tau,
                BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xb = x_ptr + row * stride_x
    rb = r_ptr + row * stride_r
    offs = tl.arange(0, BLOCK_V)
    m_z = tl.full([], float("-inf"), tl.float32)
    m_r = tl.full([], float("-inf"), tl.float32)
    s_z = tl.full([], 0.0, tl.float32)
    s_r = tl.full([], 0.0, tl.float32)
    u = tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        mask = cols < V
        z = tl.load(xb + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_tau
        r = tl.load(rb + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_tau
        m_z, s_z, m_r, s_r, u = _online_kl_update(m_z, s_z, m_r, s_r, u, z, r)
    log_sz = tl.log(s_z)
    log_sr = tl.log(s_r)
    lse_z = m_z + log_sz
    # Backward stats (max, log-sum) kept apart: z - max is exact even where |z| ~ 1e4.
    tl.store(st_ptr + row, m_z)
    tl.store(st_ptr + N + row, log_sz)
    tl.store(st_ptr + 2 * N + row, m_r)
    tl.store(st_ptr + 3 * N + row, log_sr)
    tl.store(kl_ptr + row, u / s_r - log_sr + log_sz)
    tok = tl.load(tok_ptr + row)
    tl.store(lp_ptr + row, tl.load(xb + tok).to(tl.float32) * inv_tau - lse_z)


@triton.jit
def _bwd_kernel(x_ptr, r_ptr, tok_ptr, st_ptr, glp_ptr, gkl_ptr, dx_ptr,
                N, V, stride_x, stride_r, stride_dx, inv_tau, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < V
    z = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32) * inv_tau
    r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32) * inv_tau
    p = tl.exp((z - tl.load(st_ptr + row)) - tl.load(st_ptr + N + row))
    q = tl.exp((r - tl.load(st_ptr + 2 * N + row)) - tl.load(st_ptr + 3 * N + row))
    g_lp = tl.load(glp_ptr + row)
    g_kl = tl.load(gkl_ptr + row)
    tok = tl.load(tok_ptr + row)
    dz = (g_kl - g_lp) * p - g_kl * q + tl.where(cols == tok, g_lp, 0.0)
    tl.store(dx_ptr + row * stride_dx + cols, (dz * inv_tau).to(dx_ptr.dtype.element_ty), mask=mask)


_FWD_CONFIGS = [triton.Config({"BLOCK_V": bv}, num_warps=w) for bv, w in ((2048, 8), (4096, 8), (4096, 16))]
_BWD_CONFIGS = [triton.Config({"BLOCK_V": bv}, num_warps=w) for bv, w in ((1024, 4), (2048, 8), (4096, 8))]
if interpreting():
    _fwd, _bwd = _fwd_kernel, _bwd_kernel
else:
    _fwd = triton.autotune(_FWD_CONFIGS, key=["V"])(_fwd_kernel)
    _bwd = triton.autotune(_BWD_CONFIGS, key=["V"])(_bwd_kernel)
_INTERP_BLOCK = 256


def forward(logits, ref_logits, tokens, temperature):
    logits, ref_logits = rowmajor(logits), rowmajor(ref_logits)
    n, v = logits.shape
    out = torch.full((2, n), float("nan"), dtype=torch.float32, device=logits.device)
    lp, kl = out.unbind(0)
    stats = torch.full((4, n), float("nan"), dtype=torch.float32, device=logits.device)
    if n:
        extra = {"BLOCK_V": _INTERP_BLOCK} if interpreting() else {}
        _fwd[(n,)](logits, ref_logits, tokens, lp, kl, stats, n, v, logits.stride(0), ref_logits.stride(0),
                   1.0 / temperature, **extra)
    return lp, kl, stats


def backward(logits, ref_logits, tokens, temperature, stats, g_lp, g_kl, out=None) -> torch.Tensor:
    """d(Σ g_lp·logprob + g_kl·kl)/d(logits), written into `out` (a new NaN-filled tensor if None)."""
    logits, ref_logits = rowmajor(logits), rowmajor(ref_logits)
    n, v = logits.shape
    grad = torch.full_like(logits, float("nan")) if out is None else out
    if n == 0:
        return grad
    zeros = torch.zeros(n, dtype=torch.float32, device=logits.device)
    g_lp = zeros if g_lp is None else g_lp.float().contiguous()
    g_kl = zeros if g_kl is None else g_kl.float().contiguous()
    args = (logits, ref_logits, tokens, stats, g_lp, g_kl, grad, n, v, logits.stride(0),
            ref_logits.stride(0), grad.stride(0), 1.0 / temperature)
    if interpreting():
        _bwd[(n, triton.cdiv(v, _INTERP_BLOCK))](*args, BLOCK_V=_INTERP_BLOCK)
    else:
        _bwd[lambda meta: (n, triton.cdiv(v, meta["BLOCK_V"]))](*args)
    return grad
