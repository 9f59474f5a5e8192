"""OmniOPD loss fused with the student and reference LM heads (no [N, V] logits)."""

from .naive import linear_logprob_kl_naive, linear_omniopd_loss_naive
from .op import LinearLogprobKLFunction, linear_logprob_kl, linear_omniopd_loss, linear_omniopd_loss_terms

__all__ = ["LinearLogprobKLFunction", "linear_logprob_kl", "linear_logprob_kl_naive", "linear_omniopd_loss",
           "linear_omniopd_loss_naive", "linear_omniopd_loss_terms"]
