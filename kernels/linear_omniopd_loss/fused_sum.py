"""Triton backend of `linear_omniopd_loss(reduction="sum")`: gradient computed inside the forward.

The summed loss is linear in its upstream gradient, so the forward can already produce d_hidden and
d_weight for an upstream of 1 and the backward only scales them (the trick of Liger's fused linear
cross-entropy). Per row chunk: cuBLAS makes the student and reference logits with fp32 output
(nothing rounded to bf16), one streaming Triton pass gives the per-row statistics, a second writes
the logits gradient, and cuBLAS reduces it into d_hidden and d_weight. Logits are computed once
(4 matmuls in all instead of 6 for recompute-in-backward); extra memory is one chunk of both heads.
"""

from __future__ import annotations

import torch

from .._linear_tiles import fp32_logits, grad_dtype, logits_chunk_rows
from ..omniopd_loss import triton_impl as rows


class LinearOmniOPDSumFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta, temperature):
        n = hidden.shape[0]
        v = weight.shape[0]
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        g_lp = (-weights.float()).contiguous()
        g_kl = (float(beta) * kl_mask.float()).contiguous()
        z_of, r_of = fp32_logits(weight), fp32_logits(ref_weight)
        gdt = grad_dtype(hidden, weight)
        w_mm = weight if weight.dtype == gdt else weight.float()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dh = torch.full_like(hidden, float("nan")) if need else None
        dw = torch.zeros(weight.shape, dtype=gdt, device=weight.device) if need else None
        step = logits_chunk_rows(n, v, heads=2)
        dz = torch.empty((min(step, n), v), dtype=gdt, device=hidden.device) if need and n else None
        for s in range(0, n, step):
            e = min(n, s + step)
            z, r = z_of(hidden[s:e]), r_of(ref_hidden[s:e])
            tok = tokens[s:e]
            lp, kl, stats = rows.forward(z, r, tok, temperature)
            loss += (g_lp[s:e] * lp).sum() + (g_kl[s:e] * kl).sum()
            if need:
                buf = rows.backward(z, r, tok, temperature, stats, g_lp[s:e], g_kl[s:e], out=dz[: e - s])
                del z, r
                h_mm = hidden[s:e] if hidden.dtype == gdt else hidden[s:e].float()
                dh[s:e] = buf @ w_mm
                dw.addmm_(buf.T, h_mm)
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        d_hidden = None if dh is None or not ctx.needs_input_grad[0] else dh * g.to(dh.dtype)
        d_weight = None if dw is None or not ctx.needs_input_grad[1] else (dw * g.to(dw.dtype)).to(ctx.dtypes[1])
        return d_hidden, d_weight, None, None, None, None, None, None, None
