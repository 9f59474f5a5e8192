"""Fused OmniOPD loss: -w·log π(y) + β·mask·KL(π_ref ‖ π), streaming student and reference rows."""

from .naive import logprob_kl_naive, omniopd_loss_naive
from .op import LogprobKLFunction, logprob_kl, omniopd_loss

__all__ = ["LogprobKLFunction", "logprob_kl", "logprob_kl_naive", "omniopd_loss", "omniopd_loss_naive"]
