"""Peak-entropy fork selection (greedy, non-overlapping chunks inside the valid region)."""

from .naive import select_forks_naive
from .op import select_forks

__all__ = ["select_forks", "select_forks_naive"]
