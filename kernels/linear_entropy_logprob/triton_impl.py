"""Triton path: tiles of h·Wᵀ are made with tl.dot and folded into per-row online statistics
(forward never holds [N, V]); the backward recomputes tiles one row chunk at a time, writes the
chunk's logits gradient and hands the two reductions (d_hidden, d_weight) to cuBLAS."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import interpreting
from .._linear_tiles import (
    INTERP_TILES,
    bwd_chunk_rows,
    dot_flags,
    fp32_logits,
    fwd_configs,
    grad_dtype,
    logits_chunk_rows,
    logits_tile,
    use_cublas_chunks,
    vocab_splits,
)
from ..entropy_logprob import triton_impl as rows


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tok_ptr, part_ptr, N, V, D, split_len, stride_h, stride_w, inv_tau,
                HAS_BIAS: tl.constexpr, HAS_TOK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    sp = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    tok = rows
    if HAS_TOK:
        tok = tl.load(tok_ptr + rows, mask=rmask, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    t = tl.zeros([BLOCK_N], tl.float32)
    tz = tl.zeros([BLOCK_N], tl.float32)
    v_lo = sp * split_len
    v_hi = tl.minimum(V, v_lo + split_len)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, inv_tau,
                        HAS_BIAS, UPCAST, PREC, BLOCK_N, BLOCK_V, BLOCK_D)
        m_new = tl.maximum(m, tl.max(z, 1))
        alpha = tl.exp(m - m_new)
        d = z - m_new[:, None]
        e = tl.exp(d)
        t = tl.where(s > 0, alpha * (t + (m - m_new) * s), 0.0) + tl.sum(tl.where(e > 0, e * d, 0.0), 1)
        s = s * alpha + tl.sum(e, 1)
        m = m_new
        if HAS_TOK:
            tz += tl.sum(tl.where(cols[None, :] == tok[:, None], z, 0.0), 1)
    nsp = tl.num_programs(1)
    base = part_ptr + sp * N + rows
    tl.store(base, m, mask=rmask)
    tl.store(base + nsp * N, s, mask=rmask)
    tl.store(base + 2 * nsp * N, t, mask=rmask)
    tl.store(base + 3 * nsp * N, tz, mask=rmask)


@triton.jit
def _bwd_kernel(h_ptr, w_ptr, b_ptr, tok_ptr, ent_ptr, st_ptr, N, gent_ptr, glp_ptr, glse_ptr, dz_ptr,
                row0, n_hi, V, D, stride_h, stride_w, stride_dz, inv_tau,
                HAS_BIAS: tl.constexpr, HAS_TOK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = row0 + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    rmask = rows < n_hi
    z = logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, n_hi, V, D, stride_h, stride_w, inv_tau,
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
    out = dz_ptr + (rows - row0).to(tl.int64)[:, None] * stride_dz + cols[None, :]
    tl.store(out, (dz * inv_tau).to(dz_ptr.dtype.element_ty), mask=rmask[:, None] & (cols[None, :] < V))


if interpreting():
    _fwd, _bwd = _fwd_kernel, _bwd_kernel
else:
    _fwd = triton.autotune(fwd_configs(), key=["V", "D", "HAS_TOK"])(_fwd_kernel)
    _bwd = triton.autotune(fwd_configs(), key=["V", "D", "HAS_TOK"])(_bwd_kernel)


def _rowmajor(x):
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def combine_entropy(part: torch.Tensor):
    """[4, S, N] partials (max, sum, centred sum e·z, token logit) -> (entropy, lse, token logit, max, log-sum)."""
    m, s, t, tz = part.unbind(0)
    mx = m.max(0).values
    w = torch.exp(m - mx)
    s_tot = (s * w).sum(0)
    t_tot = torch.where(s > 0, w * (t + (m - mx) * s), 0.0).sum(0)
    log_s = s_tot.log()
    return log_s - t_tot / s_tot, mx + log_s, tz.sum(0), mx, log_s


def forward_cublas(hidden, weight, bias, tokens, temperature):
    """Row chunks of fp32 cuBLAS logits, each streamed once through the entropy row kernel."""
    n, v = hidden.shape[0], weight.shape[0]
    out = torch.full((3, n), float("nan"), dtype=torch.float32, device=hidden.device)
    stats = torch.full((2, n), float("nan"), dtype=torch.float32, device=hidden.device)
    z_of = fp32_logits(weight, bias)
    step = logits_chunk_rows(n, v)
    for s in range(0, n, step):
        e = min(n, s + step)
        ent, lp, lse, mx = rows.forward(z_of(hidden[s:e]), None if tokens is None else tokens[s:e], temperature)
        out[0, s:e], out[2, s:e], stats[:, s:e] = ent, lse, mx
        if lp is not None:
            out[1, s:e] = lp
    return out[0], (out[1] if tokens is not None else None), out[2], stats


def backward_cublas(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse):
    n, v = hidden.shape[0], weight.shape[0]
    z_of = fp32_logits(weight, bias)
    gdt = grad_dtype(hidden, weight)
    w_mm = weight if weight.dtype == gdt else weight.float()
    dh = torch.full_like(hidden, float("nan"))
    dw = torch.zeros(weight.shape, dtype=gdt, device=weight.device)
    db = None if bias is None else torch.zeros(v, dtype=torch.float32, device=weight.device)
    step = logits_chunk_rows(n, v)
    dz = torch.empty((min(step, n), v), dtype=gdt, device=hidden.device)
    sl = lambda g, s, e: None if g is None else g[s:e]
    for s in range(0, n, step):
        e = min(n, s + step)
        buf = rows.backward(z_of(hidden[s:e]), sl(tokens, s, e), temperature, ent[s:e], lse[s:e], stats[:, s:e],
                            sl(g_ent, s, e), sl(g_lp, s, e), sl(g_lse, s, e), out=dz[: e - s])
        h_mm = hidden[s:e] if hidden.dtype == gdt else hidden[s:e].float()
        dh[s:e] = buf @ w_mm
        dw.addmm_(buf.T, h_mm)
        if db is not None:
            db += buf.float().sum(0)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))


def forward(hidden, weight, bias, tokens, temperature):
    hidden, weight, bias = _rowmajor(hidden), _rowmajor(weight), _rowmajor(bias)
    if use_cublas_chunks(hidden):
        return forward_cublas(hidden, weight, bias, tokens, temperature)
    n, d = hidden.shape
    v = weight.shape[0]
    splits, split_len = vocab_splits(n, v, hidden.device)
    part = torch.full((4, splits, n), float("nan"), dtype=torch.float32, device=hidden.device)
    upcast, prec = dot_flags(hidden, weight)
    if n:
        args = (hidden, weight, bias if bias is not None else hidden, tokens if tokens is not None else hidden,
                part, n, v, d, split_len, hidden.stride(0), weight.stride(0), 1.0 / temperature)
        flags = dict(HAS_BIAS=bias is not None, HAS_TOK=tokens is not None, UPCAST=upcast, PREC=prec)
        if interpreting():
            _fwd[(triton.cdiv(n, INTERP_TILES["BLOCK_N"]), splits)](*args, **flags, **INTERP_TILES)
        else:
            _fwd[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)](*args, **flags)
    ent, lse, tz, mx, log_s = combine_entropy(part)
    return ent, (tz - lse if tokens is not None else None), lse, torch.stack([mx, log_s])


def backward(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse):
    hidden, weight, bias = _rowmajor(hidden), _rowmajor(weight), _rowmajor(bias)
    if use_cublas_chunks(hidden):
        return backward_cublas(hidden, weight, bias, tokens, temperature, ent, lse, stats, g_ent, g_lp, g_lse)
    n, d = hidden.shape
    v = weight.shape[0]
    zeros = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    g_ent = zeros if g_ent is None else g_ent.float().contiguous()
    g_lse = zeros if g_lse is None else g_lse.float().contiguous()
    has_tok = tokens is not None and g_lp is not None
    g_lp = g_lp.float().contiguous() if has_tok else zeros
    upcast, prec = dot_flags(hidden, weight)
    gdt = grad_dtype(hidden, weight)
    w_mm = weight if weight.dtype == gdt else weight.float()
    dh = torch.full_like(hidden, float("nan"))
    # d_weight accumulates in fp32 unless both operands are half (then cuBLAS addmm in that dtype).
    dw = torch.zeros(weight.shape, dtype=gdt, device=weight.device)
    db = None if bias is None else torch.zeros(v, dtype=torch.float32, device=weight.device)
    step = bwd_chunk_rows(n, v, torch.finfo(gdt).bits // 8)
    dz = torch.empty((min(step, n), v), dtype=gdt, device=hidden.device)
    flags = dict(HAS_BIAS=bias is not None, HAS_TOK=has_tok, UPCAST=upcast, PREC=prec)
    for s in range(0, n, step):
        e = min(n, s + step)
        buf = dz[: e - s]
        buf.fill_(float("nan"))
        args = (hidden, weight, bias if bias is not None else hidden, tokens if has_tok else zeros, ent, stats, n,
                g_ent, g_lp, g_lse, buf, s, e, v, d, hidden.stride(0), weight.stride(0), buf.stride(0),
                1.0 / temperature)
        if interpreting():
            grid = (triton.cdiv(e - s, INTERP_TILES["BLOCK_N"]), triton.cdiv(v, INTERP_TILES["BLOCK_V"]))
            _bwd[grid](*args, **flags, **INTERP_TILES)
        else:
            _bwd[lambda meta, r=e - s: (triton.cdiv(r, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))](
                *args, **flags)
        h_mm = hidden[s:e] if hidden.dtype == gdt else hidden[s:e].float()
        dh[s:e] = buf @ w_mm
        dw.addmm_(buf.T, h_mm)
        if db is not None:
            db += buf.float().sum(0)
    return dh, dw.to(weight.dtype), (None if db is None else db.to(bias.dtype))
