"""Ground truth: normalize then batched matmul, in the input's dtype."""

from __future__ import annotations

import torch

EPS = 1e-8


def cosine_similarity_naive(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return an @ bn.transpose(-1, -2)
