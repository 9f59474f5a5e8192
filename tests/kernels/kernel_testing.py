"""Helpers for the kernel tests: backend/device matrix and the tolerance rule.

Tolerance rule (Cut Cross-Entropy's, defined once in `omniopd_kernels.testing`): a kernel's error
against the float64 reference must not exceed the plain-PyTorch error at the same input dtype plus a
per-dtype margin. "Plain PyTorch" here is the naive reference run on the same inputs upcast to fp32,
i.e. what careful eager code computes.
"""

from __future__ import annotations

import os

import pytest
import torch

from omniopd_kernels.testing import assert_close_rule  # noqa: F401  (the kernel tests import it from here)

# Per-dtype margin, relative to max(1, |reference|): bf16 inputs are upcast inside the kernels, so the
# margin only covers fp32 accumulation order; bf16 gradients are additionally rounded on output.
MARGIN = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float64: 2e-5}
GRAD_MARGIN = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float64: 2e-5}


def triton_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")


# (backend, device) pairs every op is tested on.
BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton")]


def device_for(backend: str) -> str:
    return "cpu" if backend == "torch" else triton_device()
