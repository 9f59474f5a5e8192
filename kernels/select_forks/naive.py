"""Ground truth: the greedy rule of docs/design.md §1 step 3, literally, in Python loops."""

from __future__ import annotations

import math

import torch


def select_forks_naive(
    entropy: torch.Tensor, valid: torch.Tensor, num_chunks: int, chunk_len: int, min_entropy: float | None = None
) -> torch.Tensor:
    b, t = entropy.shape
    out = torch.full((b, num_chunks), -1, dtype=torch.int64)
    for i in range(b):
        h = entropy[i].tolist()
        ok = valid[i].bool().tolist()
        # Visit positions by descending entropy, ties to the lower position.
        order = sorted((p for p in range(t) if not math.isnan(h[p])), key=lambda p: (-h[p], p))
        chosen: list[int] = []
        for p in order:
            if len(chosen) == num_chunks:
                break
            if min_entropy is not None and h[p] < min_entropy:
                continue
            if p + chunk_len > t or not all(ok[p:p + chunk_len]):
                continue
            if any(abs(p - c) < chunk_len for c in chosen):
                continue
            chosen.append(p)
        chosen.sort()
        out[i, : len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
    return out
