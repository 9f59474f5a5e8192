"""Streaming full-vocabulary entropy + sampled-token log-prob from logits."""

from .naive import entropy_logprob_naive
from .op import EntropyLogprobFunction, entropy_logprob

__all__ = ["EntropyLogprobFunction", "entropy_logprob", "entropy_logprob_naive"]
