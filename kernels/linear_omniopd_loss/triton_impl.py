"""`triton` path (the default on CUDA): per row chunk, matmuls (cuBLAS on CUDA) write fp32 logits of
both heads, nothing rounded through bf16, and the streaming row kernels of `omniopd_loss` read them
once; scratch <= `_linear_tiles.BWD_CHUNK_BYTES`.

`sum_with_grads` serves `linear_omniopd_loss(reduction="sum")` (and `terms_with_grads`, the same with its
policy-gradient and KL sums apart, `linear_omniopd_loss_terms`): the summed loss is linear in its
upstream gradient, so the forward can already produce d_hidden and d_weight for an upstream of 1 and
the backward only scales them (the trick of Liger's fused linear cross-entropy): each chunk's logits
are made once, 4 matmuls in all instead of 6 for recompute-in-backward.
"""

from __future__ import annotations

import torch

from .._common import head_grads
from .._linear_tiles import fp32_logits, logits_chunk_rows
from ..omniopd_loss import triton_impl as rows


def forward(hidden, weight, ref_hidden, ref_weight, tokens, temperature):
    n, v = hidden.shape[0], weight.shape[0]
    out = torch.full((2, n), float("nan"), dtype=torch.float32, device=hidden.device)
    stats = torch.full((4, n), float("nan"), dtype=torch.float32, device=hidden.device)
    z_of, r_of = fp32_logits(weight), fp32_logits(ref_weight)
    step = logits_chunk_rows(n, v, heads=2)
    for s in range(0, n, step):
        e = min(n, s + step)
        out[0, s:e], out[1, s:e], stats[:, s:e] = rows.forward(z_of(hidden[s:e]), r_of(ref_hidden[s:e]),
                                                               tokens[s:e], temperature)
    return out[0], out[1], stats


def backward(hidden, weight, ref_hidden, ref_weight, tokens, temperature, stats, g_lp, g_kl):
    z_of, r_of = fp32_logits(weight), fp32_logits(ref_weight)
    zeros = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    g_lp = zeros if g_lp is None else g_lp
    g_kl = zeros if g_kl is None else g_kl

    def chunk_grad(s, e, buf):
        return rows.backward(z_of(hidden[s:e]), r_of(ref_hidden[s:e]), tokens[s:e], temperature,
                             stats[:, s:e].contiguous(), g_lp[s:e], g_kl[s:e], out=buf)

    dh, dw, _ = head_grads(hidden, weight, logits_chunk_rows(hidden.shape[0], weight.shape[0], heads=2), chunk_grad)
    return dh, dw.to(weight.dtype)


def sum_with_grads(hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta, temperature, need_grad):
    """(Σ -weights·log π(y) + beta·kl_mask·KL, d_hidden, d_weight) for an upstream gradient of 1.

    The gradients (None without `need_grad`) keep the head matmuls' dtype (`_common.grad_dtype`)."""
    (pg, kl), dh, dw = terms_with_grads(hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta,
                                        temperature, need_grad, guard=False)
    return pg + kl, dh, dw


def terms_with_grads(hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta, temperature, need_grad,
                     *, guard=True):
    """((Σ -weights·log π(y), Σ beta·kl_mask·KL), d_hidden, d_weight): `sum_with_grads` with its two terms apart.

    `guard`: a row whose coefficient is 0 adds 0 to its term even where its log-prob is -inf (padding rows)."""
    g_lp = (-weights.float()).contiguous()
    g_kl = (float(beta) * kl_mask.float()).contiguous()

    def term(g, x):
        return torch.where(g != 0, g * x, 0.0).sum() if guard else (g * x).sum()

    if not need_grad:
        lp, kl, _ = forward(hidden, weight, ref_hidden, ref_weight, tokens, temperature)
        return (term(g_lp, lp), term(g_kl, kl)), None, None
    z_of, r_of = fp32_logits(weight), fp32_logits(ref_weight)
    pg_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    kl_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)

    def chunk_grad(s, e, buf):
        nonlocal pg_sum, kl_sum
        z, r, tok = z_of(hidden[s:e]), r_of(ref_hidden[s:e]), tokens[s:e]
        lp, kl, stats = rows.forward(z, r, tok, temperature)
        pg_sum += term(g_lp[s:e], lp)
        kl_sum += term(g_kl[s:e], kl)
        return rows.backward(z, r, tok, temperature, stats, g_lp[s:e], g_kl[s:e], out=buf)

    dh, dw, _ = head_grads(hidden, weight, logits_chunk_rows(hidden.shape[0], weight.shape[0], heads=2), chunk_grad)
    return (pg_sum, kl_sum), dh, dw
