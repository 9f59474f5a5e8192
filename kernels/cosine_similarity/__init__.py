"""Batched cosine similarity with fused normalization."""

from .naive import cosine_similarity_naive
from .op import cosine_similarity

__all__ = ["cosine_similarity", "cosine_similarity_naive"]
