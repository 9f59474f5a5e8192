"""PyTorch path: fp32 norms, one bmm, then scale by inverse norms (no normalized copies)."""

from __future__ import annotations

import torch

from .naive import EPS


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    af, bf = a.float(), b.float()
    inv_a = 1.0 / af.norm(dim=-1).clamp_min(EPS)
    inv_b = 1.0 / bf.norm(dim=-1).clamp_min(EPS)
    return torch.bmm(af, bf.transpose(1, 2)).mul_(inv_a[:, :, None]).mul_(inv_b[:, None, :])
