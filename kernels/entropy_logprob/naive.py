"""Ground truth: plain PyTorch in the input's dtype (pass float64 tensors for the exact reference)."""

from __future__ import annotations

import torch


def entropy_logprob_naive(
    logits: torch.Tensor, tokens: torch.Tensor | None = None, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    z = logits / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse[:, None]
    p = logp.exp()
    # p*logp is 0*(-inf) = nan where a logit is -inf; such entries contribute nothing.
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    logprob = None if tokens is None else logp.gather(1, tokens.long()[:, None]).squeeze(1)
    return entropy, logprob, lse
