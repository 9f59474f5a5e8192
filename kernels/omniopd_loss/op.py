"""autograd.Function and the public `omniopd_loss` / `logprob_kl`."""

from __future__ import annotations

from typing import Literal

import torch

from .._common import (
    Backend,
    check_float,
    check_temperature,
    check_tokens,
    check_vector,
    impl_module,
    resolve_backend,
)


class LogprobKLFunction(torch.autograd.Function):
    """(logits, ref_logits, tokens) -> (log π(y), KL(π_ref ‖ π)) per token; gradient to logits only."""

    @staticmethod
    def forward(ctx, logits, ref_logits, tokens, temperature, backend):
        lp, kl, stats = impl_module(__package__, backend).forward(
            logits, ref_logits, tokens, temperature)
        ctx.save_for_backward(logits, ref_logits, tokens, stats)
        ctx.temperature, ctx.backend = temperature, backend
        ctx.set_materialize_grads(False)
        return lp, kl

    @staticmethod
    def backward(ctx, g_lp, g_kl):
        logits, ref_logits, tokens, stats = ctx.saved_tensors
        grad = impl_module(__package__, ctx.backend).backward(
            logits, ref_logits, tokens, ctx.temperature, stats, g_lp, g_kl)
        return grad, None, None, None, None


def check_loss_vectors(tokens, weights, kl_mask, beta, n: int, v: int, device: torch.device) -> None:
    check_tokens("tokens", tokens, n, v, device)
    check_vector("weights", weights, n, device)
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
    check_vector("kl_mask", kl_mask, n, device)
    if not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a Python number, got {type(beta).__name__}")


def combine(lp: torch.Tensor, kl: torch.Tensor, weights, kl_mask, beta: float, reduction: str) -> torch.Tensor:
    per = -weights.float() * lp + float(beta) * kl_mask.float() * kl
    return per.sum() if reduction == "sum" else per


def check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")


def logprob_kl(
    logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor, *,
    temperature: float = 1.0, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp32 `(log π_θ(y)[N], KL(π_ref ‖ π_θ)[N])` over the full vocabulary, one streaming pass.

    The building block of `omniopd_loss`, exposed for metrics (e.g. mean KL on unaudited tokens).
    Differentiable w.r.t. `logits` through both outputs; `ref_logits` never gets a gradient.
    """
    check_float("logits", logits, 2)
    check_float("ref_logits", ref_logits, 2)
    if ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits must have the shape of logits {tuple(logits.shape)}, got "
                         f"{tuple(ref_logits.shape)}")
    if ref_logits.device != logits.device:
        raise ValueError(f"ref_logits is on {ref_logits.device}, logits on {logits.device}")
    n, v = logits.shape
    check_tokens("tokens", tokens, n, v, logits.device)
    temperature = check_temperature(temperature)
    backend = resolve_backend(backend, logits, ref_logits)
    return LogprobKLFunction.apply(logits, ref_logits.detach(), tokens, temperature, backend)


def omniopd_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor,
    kl_mask: torch.Tensor, beta: float, *, temperature: float = 1.0,
    reduction: Literal["sum", "none"] = "sum", backend: Backend = "auto",
) -> torch.Tensor:
    """OmniOPD objective: `Σ_t -weights_t·log π_θ(y_t) + beta·kl_mask_t·KL(π_ref ‖ π_θ)_t` (fp32).

    logits, ref_logits: [N, V]; tokens: [N] int; weights: [N] float (π̂ on audited tokens, 0 elsewhere);
    kl_mask: [N] bool/float (1 on unaudited tokens). `reduction="sum"` -> scalar (divide by your
    normalizer outside); `reduction="none"` -> per-token losses [N]. Use `logprob_kl` for the raw
    per-token log-prob and KL. Gradient flows to `logits` only.
    """
    check_reduction(reduction)
    check_float("logits", logits, 2)
    n, v = logits.shape
    check_loss_vectors(tokens, weights, kl_mask, beta, n, v, logits.device)
    lp, kl = logprob_kl(logits, ref_logits, tokens, temperature=temperature, backend=backend)
    return combine(lp, kl, weights, kl_mask, beta, reduction)
