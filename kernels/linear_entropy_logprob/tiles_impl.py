"""`triton_tiles` path: tiles of h·Wᵀ are made with tl.dot and folded into per-row online statistics
(forward never holds [N, V]); the backward recomputes tiles one row chunk at a time, writes the
chunk's logits gradient and hands the two reductions (d_hidden, d_weight) to cuBLAS."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _linear_tiles as lt
from .._common import head_grads, rowmajor


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tok_ptr, part_ptr, N, V, D, split_len, stride_h, stride_w, inv_tau,
                HAS_BIAS: tl.constexpr, HAS_TOK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, rmask, tok = lt.forward_rows(tok_ptr, N, BLOCK_N, HAS_TOK)
    m, s, t = lt.online_start(BLOCK_N)
    tz = tl.zeros_like(s)
    v_lo, v_hi = lt.split_columns(V, split_len)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = lt.logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, inv_tau,
                           HAS_BIAS, UPCAST, PREC, BLOCK_N, BLOCK_V, BLOCK_D)
        m_new, alpha, d, e = lt.online_max_step(m, z)
        t = tl.where(s > 0, alpha * (t + (m - m_new) * s), 0.0) + tl.sum(tl.where(e > 0, e * d, 0.0), 1)
        s = s * alpha + tl.sum(e, 1)
        m = m_new
        if HAS_TOK:
            tz += lt.token_logit(z, cols, tok)
    lt.store_partial(part_ptr, 0, m, rows, N, rmask)
    lt.store_partial(part_ptr, 1, s, rows, N, rmask)
    lt.store_partial(part_ptr, 2, t, rows, N, rmask)
    lt.store_partial(part_ptr, 3, tz, rows, N, rmask)


@triton.jit
def _bwd_kernel(h_ptr, w_ptr, b_ptr, tok_ptr, ent_ptr, st_ptr, N, gent_ptr, glp_ptr, glse_ptr, dz_ptr,
                row0, n_hi, V, D, stride_h, stride_w, stride_dz, inv_tau,
                HAS_BIAS: tl.constexpr, HAS_TOK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, rmask = lt.chunk_tile(row0, n_hi, BLOCK_N, BLOCK_V)
    z = lt.logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, n_hi, V, D, stride_h, stride_w, inv_tau,
                       HAS_BIAS, UPCAST, PREC, BLOCK_N, BLOCK_V, BLOCK_D)
    m = tl.load(st_ptr + rows, mask=rmask, other=0.0)
    log_s = tl.load(st_ptr + N + rows, mask=rmask, other=0.0)
    ent = tl.load(ent_ptr + rows, mask=rmask, other=0.0)
    g_ent = tl.load(gent_ptr + rows, mask=rmask, other=0.0)
    g_lse = tl.load(glse_ptr + rows, mask=rmask, other=0.0)
    logp = (z - m[:, None]) - log_s[:, None]  # z - max is exact; z - lse is not at |z| ~ 1e4
    p = tl.exp(logp)
    dz = g_lse[:, None] * p - g_ent[:, None] * tl.where(p > 0, p * (logp + ent[:, None]), 0.0)
    if HAS_TOK:
        g_lp = tl.load(glp_ptr + rows, mask=rmask, other=0.0)
        tok = tl.load(tok_ptr + rows, mask=rmask, other=-1)
        dz += g_lp[:, None] * (tl.where(cols[None, :] == tok[:, None], 1.0, 0.0) - p)
    lt.store_logits_grad(dz_ptr, dz, rows, cols, row0, n_hi, V, stride_dz, inv_tau)


_fwd = lt.autotuned(_fwd_kernel, key=["V", "D", "HAS_TOK"])
_bwd = lt.autotuned(_bwd_kernel, key=["V", "D", "HAS_TOK"])



def combine_entropy(part: torch.Tensor):
    """[4, S, N] partials (max, sum, centred sum e·z, token logit) -> (entropy, lse, token logit, max, log-sum)."""
    m, s, t, tz = part.unbind(0)
    mx, w, s_tot = lt.merge_splits(m, s)
    t_tot = torch.where(s > 0, w * (t + (m - mx) * s), 0.0).sum(0)
    log_s = s_tot.log()
    return log_s - t_tot / s_tot, mx + log_s, tz.sum(0), mx, log_s


def forward(hidden, weight, bias, tokens, temperature):
    hidden, weight, bias = rowmajor(hidden), rowmajor(weight), rowmajor(bias)
    n, d = hidden.shape
    v = weight.shape[0]
    splits, split_len = lt.vocab_splits(n, v, hidden.device)
    part = torch.full((4, splits, n), float("nan"), dtype=torch.float32, device=hidden.device)
    upcast, prec = lt.dot_flags(hidden, weight)
    if n:
        args = (hidden, weight, bias if bias is not None else hidden, tokens if tokens is not None else hidden,
                part, n, v, d, split_len, hidden.stride(0), weight.stride(0), 1.0 / temperature)
        flags = dict(HAS_BIAS=bias is not None, HAS_TOK=tokens is not None, UPCAST=upcast, PREC=prec)
        lt.launch_split_rows(_fwd, n, splits, args, flags)
    ent, lse, tz, mx, log_s = combine_entropy(part)
    return ent, (tz - lse if tokens is not None else None), lse, torch.stack([mx, log_s])


def backward(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse):
    hidden, weight, bias = rowmajor(hidden), rowmajor(weight), rowmajor(bias)
    n, d = hidden.shape
    v = weight.shape[0]
    zeros = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    g_ent = zeros if g_ent is None else g_ent.float().contiguous()
    g_lse = zeros if g_lse is None else g_lse.float().contiguous()
    has_tok = tokens is not None and g_lp is not None
    g_lp = g_lp.float().contiguous() if has_tok else zeros
    upcast, prec = lt.dot_flags(hidden, weight)
    flags = dict(HAS_BIAS=bias is not None, HAS_TOK=has_tok, UPCAST=upcast, PREC=prec)

    def chunk_grad(s, e, buf):
        buf.fill_(float("nan"))
        args = (hidden, weight, bias if bias is not None else hidden, tokens if has_tok else zeros, ent, stats, n,
                g_ent, g_lp, g_lse, buf, s, e, v, d, hidden.stride(0), weight.stride(0), buf.stride(0),
                1.0 / temperature)
        lt.launch_row_chunk(_bwd, e - s, v, args, flags)
        return buf

    dh, dw, db = head_grads(hidden, weight, lt.bwd_chunk_rows(hidden, weight), chunk_grad, bias=bias)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))
