"""Ground truth: materialize both heads' logits, then the plain OmniOPD reference."""

from __future__ import annotations

import torch

from ..omniopd_loss.naive import logprob_kl_naive, omniopd_loss_naive


def linear_logprob_kl_naive(hidden, weight, ref_hidden, ref_weight, tokens, temperature: float = 1.0):
    return logprob_kl_naive(hidden @ weight.T, ref_hidden @ ref_weight.T, tokens, temperature)


def linear_omniopd_loss_naive(
    hidden, weight, ref_hidden, ref_weight, tokens, weights, kl_mask, beta: float,
    temperature: float = 1.0, reduction: str = "sum",
) -> torch.Tensor:
    return omniopd_loss_naive(hidden @ weight.T, (ref_hidden @ ref_weight.T).detach(), tokens, weights,
                              kl_mask, beta, temperature, reduction)
