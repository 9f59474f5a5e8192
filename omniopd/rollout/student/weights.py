"""The student's weights as a stream of full tensors, for the weight sync into a generator.

Under FSDP2 each parameter is a DTensor shard: `full_tensor()` all-gathers one parameter at a time, so
a rank holds its shards plus one gathered tensor (and the engine's copy), never a second full state
dict. Every rank must consume the stream to its end, in the same order (each step is a collective).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def full_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) per parameter and buffer of `model`'s state dict; a tied weight once."""
    seen: set[int] = set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:  # e.g. a tied lm_head: vLLM loads it through the embedding
            continue
        seen.add(id(value))
        value = value.detach()
        yield name, value.full_tensor() if hasattr(value, "full_tensor") else value
