"""Triton path: one program per sequence keeps the whole row on chip for the greedy rounds.

Only the prefix count of valid positions is prepared outside (one cumsum); whether a chunk fits,
the greedy rounds and the ascending, -1 padded output all happen in the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import interpreting


@triton.jit
def _select_kernel(h_ptr, cs_ptr, out_ptr, T, M, C, min_h, stride_h, stride_c,
                   HAS_MIN: tl.constexpr, BLOCK_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, BLOCK_T)
    h = tl.load(h_ptr + row * stride_h + pos, mask=pos < T, other=float("nan")).to(tl.float32)
    # Chunk [t, t+C) fits iff it ends inside the row and all its C positions are valid:
    # cs[t+C-1] - cs[t-1] == C, with cs the inclusive prefix count of valid positions.
    end = pos + C - 1
    fits = end < T
    cs_end = tl.load(cs_ptr + row * stride_c + end, mask=fits, other=0)
    cs_before = tl.load(cs_ptr + row * stride_c + pos - 1, mask=fits & (pos > 0), other=0)
    cand = fits & ((cs_end - cs_before) == C) & (h == h)  # h == h drops NaN
    if HAS_MIN:
        cand = cand & (h >= min_h)
    chosen = pos < 0
    for _ in range(0, M):
        score = tl.where(cand, h, float("-inf"))
        best = tl.max(score, 0)
        idx = tl.min(tl.where(cand & (score == best), pos, BLOCK_T), 0)  # ties: lowest t
        found = idx < BLOCK_T
        chosen = chosen | (pos == idx)
        cand = cand & ~(found & (tl.abs(pos - idx) < C))
    # Ascending output: the j-th chosen position goes to slot j, -1 after the last one.
    rank = tl.cumsum(chosen.to(tl.int32), 0) - 1
    count = tl.sum(chosen.to(tl.int32), 0)
    for j in range(0, M):
        v = tl.sum(tl.where(chosen & (rank == j), pos, 0), 0)
        tl.store(out_ptr + row * M + j, tl.where(j < count, v, -1).to(tl.int64))


def select_forks(entropy, valid, num_chunks: int, chunk_len: int, min_entropy: float | None) -> torch.Tensor:
    b, t = entropy.shape
    if b == 0 or num_chunks == 0 or t == 0:
        return torch.full((b, num_chunks), -1, dtype=torch.int64, device=entropy.device)
    # -2 marks unwritten slots; checked under the interpreter (tests), no host sync on GPUs.
    out = torch.full((b, num_chunks), -2, dtype=torch.int64, device=entropy.device) if interpreting() \
        else torch.empty((b, num_chunks), dtype=torch.int64, device=entropy.device)
    h = entropy if entropy.stride(-1) == 1 else entropy.contiguous()
    cs = valid.to(torch.int32).cumsum(1, dtype=torch.int32)
    block = triton.next_power_of_2(t)
    _select_kernel[(b,)](h, cs, out, t, num_chunks, chunk_len, 0.0 if min_entropy is None else min_entropy,
                         h.stride(0), cs.stride(0), HAS_MIN=min_entropy is not None, BLOCK_T=block,
                         num_warps=4 if block <= 2048 else 8)
    if interpreting() and bool((out == -2).any()):
        raise RuntimeError("select_forks kernel left anchors unwritten")
    return out
