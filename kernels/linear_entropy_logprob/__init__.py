"""Entropy + log-prob straight from hidden states and the LM head (fused linear, no [N, V])."""

from .naive import linear_entropy_logprob_naive
from .op import LinearEntropyLogprobFunction, linear_entropy_logprob

__all__ = ["LinearEntropyLogprobFunction", "linear_entropy_logprob", "linear_entropy_logprob_naive"]
