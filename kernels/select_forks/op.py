"""Public `select_forks`."""

from __future__ import annotations

import torch

from .._common import Backend, check_device, impl_module, resolve_backend


def select_forks(
    entropy: torch.Tensor, valid: torch.Tensor, num_chunks: int, chunk_len: int, *,
    min_entropy: float | None = None, backend: Backend = "auto",
) -> torch.Tensor:
    """Peak-entropy anchors (docs/design.md §1 step 3): per row, up to `num_chunks` chunks `[t, t+chunk_len)`.

    Greedy by descending `entropy` (ties to the lower t); a chunk must lie wholly on `valid` positions
    and not overlap a chosen one; anchors with `entropy < min_entropy` (or NaN) are never taken.
    entropy: [B, T] float; valid: [B, T] bool (response tokens). Returns int64 [B, num_chunks],
    ascending per row, -1 padded (fewer fits -> fewer anchors). No gradient.
    """
    if not isinstance(entropy, torch.Tensor) or entropy.dim() != 2 or not entropy.is_floating_point():
        raise ValueError(f"entropy must be a 2-D float tensor [B, T], got "
                         f"{getattr(entropy, 'shape', type(entropy))} {getattr(entropy, 'dtype', '')}")
    if not isinstance(valid, torch.Tensor) or valid.shape != entropy.shape:
        raise ValueError(f"valid must be a tensor of entropy's shape {tuple(entropy.shape)}, got "
                         f"{getattr(valid, 'shape', type(valid))}")
    if valid.dtype != torch.bool and (valid.is_floating_point() or valid.is_complex()):
        raise TypeError(f"valid must be bool (or integer 0/1), got {valid.dtype}")
    check_device("valid", valid, entropy.device)
    if not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    if not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len must be an int >= 1, got {chunk_len!r}")
    if min_entropy is not None:
        min_entropy = float(min_entropy)
    valid = valid.bool()
    backend = resolve_backend(backend, entropy, valid)
    with torch.no_grad():
        return impl_module(__package__, backend).select_forks(entropy.detach(), valid, num_chunks, chunk_len,
                                                              min_entropy)
