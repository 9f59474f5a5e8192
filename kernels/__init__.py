"""omniopd_kernels: Triton kernels (and chunked PyTorch references) for on-policy distillation.

Contract: docs/design.md §3. Every op takes `backend="auto" | "triton" | "torch"` (auto: Triton on CUDA
tensors, the chunked PyTorch path on CPU), accumulates in fp32 and returns fp32. Depends on torch
(and triton, imported lazily only when the Triton path runs).
"""

from .cosine_similarity import cosine_similarity
from .entropy_logprob import entropy_logprob
from .linear_entropy_logprob import linear_entropy_logprob
from .linear_omniopd_loss import linear_logprob_kl, linear_omniopd_loss, linear_omniopd_loss_terms
from .omniopd_loss import logprob_kl, omniopd_loss
from .select_forks import select_forks

__all__ = [
    "cosine_similarity",
    "entropy_logprob",
    "linear_entropy_logprob",
    "linear_logprob_kl",
    "linear_omniopd_loss",
    "linear_omniopd_loss_terms",
    "logprob_kl",
    "omniopd_loss",
    "select_forks",
]
__version__ = "0.2.0"
