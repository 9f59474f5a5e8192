"""Token rows of different lengths as one padded batch: the one place rows are padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, side: Literal["left", "right"],
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`ids [len(rows), width]` long, `mask` long: 1 on real tokens). Prompts are padded on the left, so
    every row's next token is at the same column; responses on the right. `width` defaults to the longest row."""
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"pad_rows: width {width} is shorter than the longest row ({longest} tokens)")
    if side not in ("left", "right"):
        raise ValueError(f"pad_rows: side must be 'left' or 'right', got {side!r}")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, cols] = torch.tensor(list(row), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask
