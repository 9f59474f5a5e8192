"""Ground truth: plain PyTorch in the input's dtype (pass float64 tensors for the exact reference)."""

from __future__ import annotations

import torch


def logprob_kl_naive(
    logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: log π_θ(y) and KL(π_ref ‖ π_θ) over the full vocabulary."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    logq = torch.log_softmax(ref_logits / temperature, dim=-1)
    q = logq.exp()
    kl = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)
    return logp.gather(1, tokens.long()[:, None]).squeeze(1), kl


def omniopd_loss_naive(
    logits: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor,
    kl_mask: torch.Tensor, beta: float, temperature: float = 1.0, reduction: str = "sum",
) -> torch.Tensor:
    lp, kl = logprob_kl_naive(logits, ref_logits.detach(), tokens, temperature)
    per = -weights.to(lp.dtype) * lp + beta * kl_mask.to(lp.dtype) * kl
    return per.sum() if reduction == "sum" else per
