"""autograd.Function and the public `linear_omniopd_loss` / `linear_logprob_kl`."""

from __future__ import annotations

from typing import Literal

import torch

from .._common import Backend, check_temperature, check_tokens, resolve_backend
from ..linear_entropy_logprob.op import check_head
from ..omniopd_loss.op import check_loss_vectors, check_reduction, combine
from . import torch_impl


def _impl(backend: str):
    if backend == "triton":
        from . import triton_impl

        return triton_impl
    return torch_impl


class LinearLogprobKLFunction(torch.autograd.Function):
    """(hidden, weight, ref_hidden, ref_weight, tokens) -> (log π(y), KL(π_ref ‖ π)); grads to hidden, weight."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend):
        lp, kl, stats = _impl(backend).forward(hidden, weight, ref_hidden, ref_weight, tokens, temperature)
        ctx.save_for_backward(hidden, weight, ref_hidden, ref_weight, tokens, stats)
        ctx.temperature, ctx.backend = temperature, backend
        ctx.set_materialize_grads(False)
        return lp, kl

    @staticmethod
    def backward(ctx, g_lp, g_kl):
        hidden, weight, ref_hidden, ref_weight, tokens, stats = ctx.saved_tensors
        dh, dw = _impl(ctx.backend).backward(hidden, weight, ref_hidden, ref_weight, tokens, ctx.temperature,
                                             stats, g_lp, g_kl)
        return dh, dw, None, None, None, None, None


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
    return check_temperature(temperature), resolve_backend(backend, hidden, weight, ref_hidden, ref_weight)


def linear_logprob_kl(
    hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor,
    tokens: torch.Tensor, *, temperature: float = 1.0, backend: Backend = "auto",
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
    temperature: float = 1.0, reduction: Literal["sum", "none"] = "sum", backend: Backend = "auto",
) -> torch.Tensor:
    """`omniopd_loss` fused with both LM heads (student: hidden·weightᵀ, reference: ref_hidden·ref_weightᵀ).

    Scalar sum (or per-token [N] with `reduction="none"`) of `-weights·log π(y) + beta·kl_mask·KL(π_ref ‖ π)`.
    Gradient to hidden and weight only. Triton backend, `reduction="sum"`: gradients are computed in
    the forward (fp32 cuBLAS logits per row chunk, <= ~1.3 GiB scratch) and scaled in the backward;
    otherwise the per-token path (forward O(N) extra, backward recomputes logit tiles per row chunk).
    """
    check_reduction(reduction)
    check_head("hidden", hidden, "weight", weight)
    n, v = hidden.shape[0], weight.shape[0]
    check_loss_vectors(tokens, weights, kl_mask, beta, n, v, hidden.device)
    if reduction == "sum":
        temperature, resolved = _check_heads(hidden, weight, ref_hidden, ref_weight, tokens, temperature, backend)
        if resolved == "triton":
            from .fused_sum import LinearOmniOPDSumFunction

            return LinearOmniOPDSumFunction.apply(hidden, weight, ref_hidden.detach(), ref_weight.detach(), tokens,
                                                  weights.detach(), kl_mask.detach(), float(beta), temperature)
    lp, kl = linear_logprob_kl(hidden, weight, ref_hidden, ref_weight, tokens, temperature=temperature,
                               backend=backend)
    return combine(lp, kl, weights, kl_mask, beta, reduction)
