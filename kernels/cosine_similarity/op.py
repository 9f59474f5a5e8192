"""Public `cosine_similarity`."""

from __future__ import annotations

import torch

from .._common import Backend, check_device, check_float, impl_module, resolve_backend


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """Batched cosine similarity `[B, K, E] x [B, M, E] -> [B, K, M]` (fp32), normalization fused.

    A zero vector has similarity 0 with everything (norms are clamped at 1e-8). No gradient.
    """
    check_float("a", a, 3)
    check_float("b", b, 3)
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"a [B, K, E] and b [B, M, E] must share B and E, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    check_device("b", b, a.device)
    backend = resolve_backend(backend, a, b)
    with torch.no_grad():
        return impl_module(__package__, backend).cosine_similarity(a.detach(), b.detach())
