"""Rollouts: student generators and text-only teachers (submodules import their heavy deps lazily)."""
