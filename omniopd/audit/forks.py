"""Fork selection (docs/design.md §1 step 3): peak entropy (the paper's) or, for its ablation, uniformly random
placements of as many chunks; and the schedule of M over training.

All tensors here are *response-aligned*: column `t` of `entropy[B, T]` is the entropy of the
distribution that produced response token `y_t` (for a left-padded prompt of width P that is trainer
logit row `P - 1 + t`). Anchors are therefore indices into each sequence's response token list.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Sequence

import torch

from omniopd.config import AuditConfig


def num_chunks_at(step: int, cfg: AuditConfig) -> int:
    """M for training step `step` (0-based).

    `constant`: `cfg.num_chunks` at every step. `linear`: from `cfg.schedule_start` at step 0 to
    `cfg.num_chunks` at step `cfg.schedule_steps`, floor of the interpolation on the way, constant afterwards
    (also works as a ramp down when `schedule_start > num_chunks`).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if cfg.schedule == "constant":
        return cfg.num_chunks
    if cfg.schedule != "linear":
        raise ValueError(f"audit.schedule={cfg.schedule!r}: must be 'constant' or 'linear'")
    if cfg.schedule_steps <= 0:
        raise ValueError(f"audit.schedule_steps={cfg.schedule_steps!r}: must be > 0")
    start, end = cfg.schedule_start, cfg.num_chunks
    done = min(step, cfg.schedule_steps)
    # Integer floor division (floors negative ramps too): no float rounding surprises at the ends.
    return start + (end - start) * done // cfg.schedule_steps


def select_anchors(entropy: torch.Tensor, response_mask: torch.Tensor, num_chunks: int, chunk_len: int,
                   min_entropy: float | None = None) -> torch.Tensor:
    """Anchors `[B, num_chunks]` (int64, ascending per row, -1 padded) via `omniopd_kernels.select_forks`.

    Greedy in descending entropy, chunks `[t, t + chunk_len)` non-overlapping and entirely inside the
    response (every position of the chunk has `response_mask` set), ties to the lower `t`, optional
    floor `entropy >= min_entropy`. `response_mask` marks real response tokens: prompt, padding and
    post-EOS positions are False and so never anchors.
    """
    from omniopd_kernels import select_forks

    if not isinstance(entropy, torch.Tensor) or entropy.dim() != 2:
        raise ValueError(f"entropy must be a [B, T] tensor, got {_shape(entropy)}")
    if not isinstance(response_mask, torch.Tensor) or response_mask.shape != entropy.shape:
        raise ValueError(f"response_mask must have the shape of entropy {tuple(entropy.shape)}, "
                         f"got {_shape(response_mask)}")
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len must be an int >= 1, got {chunk_len!r}")
    if num_chunks == 0:
        return torch.full((entropy.shape[0], 0), -1, dtype=torch.int64, device=entropy.device)
    return select_forks(entropy.detach(), response_mask.bool(), num_chunks, chunk_len, min_entropy=min_entropy)


def random_anchors(counts: Sequence[int], lengths: Sequence[int], chunk_len: int, seeds: Sequence[int],
                   width: int) -> torch.Tensor:
    """Anchors `[B, width]` (int64, ascending per row, -1 padded): on row b, `counts[b]` non-overlapping chunks of
    `chunk_len` tokens inside a response of `lengths[b]` tokens, uniformly at random over all such placements,
    drawn from `random.Random(seeds[b])` alone (so a row's anchors do not depend on the rest of the batch).

    Uniform by a bijection: k chunks of C in L tokens leave L - kC free tokens around them; choosing the k
    sorted values v_0 < ... < v_{k-1} from range(L - kC + k) and starting chunk i at v_i + i(C - 1) reaches each
    placement exactly once, so a uniform k-subset gives a uniform placement (there are comb(L - kC + k, k)).
    """
    if not len(counts) == len(lengths) == len(seeds):
        raise ValueError(f"counts, lengths and seeds need one entry per row: got {len(counts)}, {len(lengths)}, "
                         f"{len(seeds)}")
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len must be an int >= 1, got {chunk_len!r}")
    out = torch.full((len(counts), width), -1, dtype=torch.int64)
    for b, (k, length, seed) in enumerate(zip(counts, lengths, seeds)):
        if k < 0 or k > width or k * chunk_len > length:
            raise ValueError(f"row {b}: {k} chunks of {chunk_len} do not fit a response of {length} tokens in "
                             f"{width} slots")
        picks = sorted(random.Random(seed).sample(range(length - k * chunk_len + k), k))
        out[b, :k] = torch.tensor([v + i * (chunk_len - 1) for i, v in enumerate(picks)], dtype=torch.int64)
    return out


def sample_seeds(seed: int, step: int, problem_ids: Sequence[Hashable]) -> list[int]:
    """One seed per row from (run seed, step, problem, sample index within that problem's rows): no rank and no
    row position in it, so a batch split over 1 or 2 ranks draws the same placements for the same sample."""
    seen: dict[Hashable, int] = {}
    out = []
    for pid in problem_ids:
        j = seen[pid] = seen.get(pid, -1) + 1
        key = repr(("fork-selection", seed, step, pid, j)).encode()
        out.append(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    return out


def pick_anchors(entropy: torch.Tensor, response_mask: torch.Tensor, num_chunks: int, cfg: AuditConfig,
                 seeds: Sequence[int]) -> torch.Tensor:
    """The step's anchors `[B, num_chunks]` as `cfg.selection` says: 'entropy' is `select_anchors`; 'random'
    places, on each response, as many chunks as entropy selection placed there (`random_anchors`, one seed per
    row). Responses are contiguous from column 0 (right padding)."""
    anchors = select_anchors(entropy, response_mask, num_chunks, cfg.chunk_len, cfg.min_entropy)
    if cfg.selection == "entropy":
        return anchors
    if cfg.selection != "random":
        raise ValueError(f"audit.selection={cfg.selection!r}: must be 'entropy' or 'random'")
    mask = response_mask.bool().cpu()
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
        raise ValueError("response_mask must be contiguous from column 0 in every row (right-padded responses)")
    counts = (anchors >= 0).sum(1).tolist()
    return random_anchors(counts, lengths.tolist(), cfg.chunk_len, seeds, anchors.shape[1]).to(anchors.device)


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
