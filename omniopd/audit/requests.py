"""What the teacher is asked at each fork: the student's response text before the anchor, never the chunk.

`build_forks` turns anchors into `Fork`s in ascending anchor order per sequence, so a prefix-caching
teacher (vLLM, SGLang, API prompt caches) reuses the KV of the shorter prefix for the longer ones. The
teacher client prepends the prompt chat the student saw (looked up by `Fork.seq`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class Fork:
    """One audited chunk: response `seq` of the batch, tokens `[anchor, anchor + C)` of its response."""

    seq: int
    anchor: int
    prefix_text: str  # response text before the chunk (what the teacher continues from)
    chunk_text: str  # the student's draft s = decode(y[anchor:anchor + C])


def build_forks(responses: Sequence[Sequence[int]], anchors: torch.Tensor, tokenizer: Decoder,
                chunk_len: int, *, skip_special_tokens: bool = True) -> list[Fork]:
    """Forks for every anchor >= 0 of `anchors[B, M]`, ordered by sequence then ascending anchor.

    `responses[b]` is sequence b's response token ids (no prompt). Text is decoded from whole prefixes,
    never token by token: `full = decode(y[:a + C])`, `head = decode(y[:a])`; `prefix_text` is the
    longest common prefix of the two minus trailing U+FFFD (the mark of a partly decoded character),
    and `chunk_text` the rest of `full`. When the token boundary is clean this is exactly
    `decode(y[:a])` and `decode(y[a:a + C])` (with the chunk's leading space kept even by tokenizers
    that strip it when decoding a lone piece); when `a` splits a multi-byte character, its replacement
    mark leaves the prefix and the character (whole, or still partial) opens the chunk.
    """
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2:
        raise ValueError(f"anchors must be a [B, M] tensor, got {getattr(anchors, 'shape', type(anchors))}")
    if anchors.shape[0] != len(responses):
        raise ValueError(f"anchors has {anchors.shape[0]} rows but {len(responses)} responses were given")
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len must be an int >= 1, got {chunk_len!r}")
    forks: list[Fork] = []
    for seq, row in enumerate(anchors.tolist()):
        ids = list(responses[seq])
        for anchor in sorted(a for a in row if a >= 0):
            if anchor + chunk_len > len(ids):
                raise ValueError(f"sequence {seq}: chunk at anchor {anchor} (length {chunk_len}) runs past "
                                 f"the response's {len(ids)} tokens")
            head = tokenizer.decode(ids[:anchor], skip_special_tokens=skip_special_tokens)
            full = tokenizer.decode(ids[:anchor + chunk_len], skip_special_tokens=skip_special_tokens)
            cut = len(os.path.commonprefix([head, full]))
            while cut and full[cut - 1] == "\ufffd":  # never hand the teacher half a character
                cut -= 1
            forks.append(Fork(seq=seq, anchor=anchor, prefix_text=full[:cut], chunk_text=full[cut:]))
    return forks
