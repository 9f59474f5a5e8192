"""autograd.Function and the public `linear_omniopd_loss` / `linear_logprob_kl`."""

from __future__ import annotations

from typing import Literal

import torch

from .._common import LINEAR_BACKENDS, LinearBackend, check_temperature, check_tokens, impl_module, resolve_backend
from ..linear_entropy_logprob.op import check_head
from ..omniopd_loss.op import check_loss_vectors, check_reduction, combine


class LinearLogprobKLFunction(torch.autograd.Function):
    """(hidden, weight, ref_hidden, ref_weight, tokens) -> (log π(y), KL(π_ref ‖ π)); grads to hidden, weight."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend):
        impl = impl_module(__package__, backend)
        lp, kl, stats = impl.forward(hidden, weight, ref_hidden, ref_weight, tokens, temperature)
        ctx.save_for_backward(hidden, weight, ref_hidden, ref_weight, tokens, stats)
        ctx.temperature, ctx.backend = temperature, backend
        ctx.set_materialize_grads(False)
        return lp, kl

    @staticmethod
    def backward(ctx, g_lp, g_kl):
        hidden, weight, ref_hidden, ref_weight, tokens, stats = ctx.saved_tensors
        dh, dw = impl_module(__package__, ctx.backend).backward(
            hidden, weight, ref_hidden, ref_weight, tokens, ctx.temperature, stats, g_lp, g_kl)
        return dh, dw, None, None, None, None, None


class LinearOmniOPDSumFunction(torch.autograd.Function):
    """`linear_omniopd_loss(reduction="sum")` on the `triton` path: gradients made in the forward, scaled in the
    backward."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta, temperature):
        from . import triton_impl

        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, dh, dw = triton_impl.sum_with_grads(hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask,
                                                  beta, temperature, need)
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        d_hidden = None if dh is None or not ctx.needs_input_grad[0] else dh * g.to(dh.dtype)
        d_weight = None if dw is None or not ctx.needs_input_grad[1] else (dw * g.to(dw.dtype)).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None, None, None


class LinearOmniOPDTermsFunction(torch.autograd.Function):
    """`linear_omniopd_loss_terms` on the `triton` path: `LinearOmniOPDSumFunction` that also returns its
    policy-gradient and KL sums (no gradient through those two)."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta, temperature):
        from . import triton_impl

        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        (pg, kl), dh, dw = triton_impl.terms_with_grads(hidden, weight, ref_hidden, ref_weight, tokens, weights,
                                                        kl_mask, beta, temperature, need)
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(pg, kl)
        return pg + kl, pg, kl

    @staticmethod
    def backward(ctx, g, _g_pg, _g_kl):
        return LinearOmniOPDSumFunction.backward(ctx, g)


def _check_heads(hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend) -> tuple[float, str]:
    check_head("hidden", hidden, "weight", weight)
    check_head("ref_hidden", ref_hidden, "ref_weight", ref_weight)
    n, v = hidden.shape[0], weight.shape[0]
    if ref_hidden.shape[0] != n or ref_weight.shape[0] != v:
        raise ValueError(f"ref_hidden/ref_weight must give [N={n}, V={v}] logits, got {tuple(ref_hidden.shape)} "
                         f"and {tuple(ref_weight.shape)}")
    if ref_hidden.device != hidden.device:
        raise ValueError(f"ref_hidden is on {ref_hidden.device}, hidden on {hidden.device}")
    check_tokens("tokens", tokens, n, v, hidden.device)
    return check_temperature(temperature), resolve_backend(backend, hidden, weight, ref_hidden, ref_weight,
                                                   allowed=LINEAR_BACKENDS)


def linear_logprob_kl(
    hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor,
    tokens: torch.Tensor, *, temperature: float = 1.0, backend: LinearBackend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp32 `(log π_θ(y), KL(π_ref ‖ π_θ))` from both heads, never holding [N, V].

    hidden [N, D] · weight [V, D]ᵀ is the student; ref_hidden [N, Dr] · ref_weight [V, Dr]ᵀ the frozen
    reference (no gradient). Differentiable w.r.t. hidden and weight.
    """
    temperature, backend = _check_heads(hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend)
    return LinearLogprobKLFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                         temperature, backend)


def linear_omniopd_loss(
    hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor,
    tokens: torch.Tensor, weights: torch.Tensor, kl_mask: torch.Tensor, beta: float, *,
    temperature: float = 1.0, reduction: Literal["sum", "none"] = "sum", backend: LinearBackend = "auto",
) -> torch.Tensor:
    """`omniopd_loss` fused with both LM heads (student: hidden·weightᵀ, reference: ref_hidden·ref_weightᵀ).

    Scalar sum (or per-token [N] with `reduction="none"`) of `-weights·log π(y) + beta·kl_mask·KL(π_ref ‖ π)`.
    Gradient to hidden and weight only. backend as in `linear_logprob_kl`. With `backend="triton"` (the
    CUDA default) and `reduction="sum"` the gradients are computed in the forward (the loss is linear in
    its upstream gradient; <= ~1.3 GiB scratch) and only scaled in the backward; every other
    combination is `linear_logprob_kl` followed by the weighted sum, recomputing logits in the backward.
    """
    check_reduction(reduction)
    check_head("hidden", hidden, "weight", weight)
    n, v = hidden.shape[0], weight.shape[0]
    check_loss_vectors(tokens, weights, kl_mask, beta, n, v, hidden.device)
    temperature, resolved = _check_heads(hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend)
    if reduction == "sum" and resolved == "triton":
        return LinearOmniOPDSumFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                              weights.detach(), kl_mask.detach(), float(beta), temperature)
    lp, kl = LinearLogprobKLFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                           temperature, resolved)
    return combine(lp, kl, weights, kl_mask, beta, reduction)


def linear_omniopd_loss_terms(
    hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor,
    tokens: torch.Tensor, weights: torch.Tensor, kl_mask: torch.Tensor, beta: float, *,
    temperature: float = 1.0, backend: LinearBackend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, pg, kl)`: `linear_omniopd_loss(reduction="sum")` with its two terms, for metrics, at the cost of
    the summed loss (no per-token output).

    `pg = Σ -weights·log π(y)` and `kl = Σ beta·kl_mask·KL(π_ref ‖ π)` are detached fp32 scalars and
    `loss = pg + kl` carries the gradient to hidden and weight. A row whose coefficient is 0 adds 0 to its
    term even where its log-prob is -inf (padding rows). On `backend="triton"` (the CUDA default) the
    gradients are made in the forward, as for `reduction="sum"`.
    """
    check_head("hidden", hidden, "weight", weight)
    n, v = hidden.shape[0], weight.shape[0]
    check_loss_vectors(tokens, weights, kl_mask, beta, n, v, hidden.device)
    temperature, resolved = _check_heads(hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend)
    if resolved == "triton":
        return LinearOmniOPDTermsFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                                weights.detach(), kl_mask.detach(), float(beta), temperature)
    lp, kl = LinearLogprobKLFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                           temperature, resolved)
    g_lp, g_kl = -weights.detach().float(), float(beta) * kl_mask.detach().float()
    pg = torch.where(g_lp != 0, g_lp * lp, 0.0).sum()
    kl = torch.where(g_kl != 0, g_kl * kl, 0.0).sum()
    return pg + kl, pg.detach(), kl.detach()
