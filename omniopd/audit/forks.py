"""Peak-entropy fork selection (docs/design.md §1 step 3) and the schedule of M over training.

All tensors here are *response-aligned*: column `t` of `entropy[B, T]` is the entropy of the
distribution that produced response token `y_t` (for a left-padded prompt of width P that is trainer
logit row `P - 1 + t`). Anchors are therefore indices into each sequence's response token list.
"""

from __future__ import annotations

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


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
