"""Ground truth: materialize the logits, then the plain entropy/log-prob reference."""

from __future__ import annotations

import torch

from ..entropy_logprob.naive import entropy_logprob_naive


def linear_entropy_logprob_naive(
    hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor | None = None,
    bias: torch.Tensor | None = None, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return entropy_logprob_naive(logits, tokens, temperature)
