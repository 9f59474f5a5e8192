"""Vectorized PyTorch path: num_chunks rounds of a masked argmax over [B, T]."""

from __future__ import annotations

import torch


def candidates(entropy: torch.Tensor, valid: torch.Tensor, chunk_len: int, min_entropy: float | None):
    """[B, T] bool: anchor t is allowed (its whole chunk [t, t+C) is valid, entropy finite-or-inf, ≥ floor)."""
    b, t = entropy.shape
    cs = torch.zeros(b, t + 1, dtype=torch.int32, device=entropy.device)
    cs[:, 1:] = valid.to(torch.int32).cumsum(1, dtype=torch.int32)
    cand = torch.zeros(b, t, dtype=torch.bool, device=entropy.device)
    span = t - chunk_len + 1
    if span > 0:
        cand[:, :span] = (cs[:, chunk_len:] - cs[:, :span]) == chunk_len
    cand &= ~entropy.isnan()
    if min_entropy is not None:
        cand &= entropy >= min_entropy
    return cand


def sort_anchors(anchors: torch.Tensor, t: int) -> torch.Tensor:
    """Ascending, -1 padding at the end."""
    big = torch.where(anchors < 0, torch.full_like(anchors, t), anchors)
    big = big.sort(dim=1).values
    return torch.where(big >= t, torch.full_like(big, -1), big)


def select_forks(entropy, valid, num_chunks: int, chunk_len: int, min_entropy: float | None) -> torch.Tensor:
    b, t = entropy.shape
    h = entropy.float()
    cand = candidates(h, valid, chunk_len, min_entropy)
    pos = torch.arange(t, device=h.device)
    anchors = torch.full((b, num_chunks), -1, dtype=torch.int64, device=h.device)
    neg_inf = torch.tensor(float("-inf"), device=h.device)
    for i in range(num_chunks):
        score = torch.where(cand, h, neg_inf)
        best = score.max(1, keepdim=True).values if t else score[:, :1]
        idx = torch.where(cand & (score == best), pos, t).min(1).values if t else pos.new_full((b,), t)
        found = idx < t
        anchors[:, i] = torch.where(found, idx, -1)
        if not bool(found.any()):
            break
        cand &= ~(((pos[None] - idx[:, None]).abs() < chunk_len) & found[:, None])
    return sort_anchors(anchors, t)
