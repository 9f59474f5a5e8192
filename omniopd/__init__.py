"""OmniOPD: on-policy distillation from teachers that only return text."""

__version__ = "0.1.0"
