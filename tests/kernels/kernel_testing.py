"""Helpers for the kernel tests: backend/device matrix and the tolerance rule.

Tolerance rule (Cut Cross-Entropy's): a kernel's error against the float64 reference must not exceed
the plain-PyTorch error at the same input dtype plus a per-dtype margin. "Plain PyTorch" here is the
naive reference run on the same inputs upcast to fp32, i.e. what careful eager code computes.
"""

from __future__ import annotations

import os

import pytest
import torch

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


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double().cpu() - ref.double().cpu()).abs().max()) if x.numel() else 0.0


def assert_close_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, plain: torch.Tensor,
                      margin: float) -> None:
    """kernel error vs float64 <= plain-PyTorch error + margin * max(1, max|ref|); no NaN anywhere."""
    kernel, ref64, plain = kernel.detach(), ref64.detach(), plain.detach()
    assert kernel.shape == ref64.shape, f"{name}: shape {tuple(kernel.shape)} vs {tuple(ref64.shape)}"
    assert not torch.isnan(kernel).any(), f"{name}: NaN in output (unwritten element?)"
    scale = max(1.0, float(ref64.abs().max())) if ref64.numel() else 1.0
    err, base = max_err(kernel, ref64), max_err(plain, ref64)
    assert err <= base + margin * scale, f"{name}: kernel err {err:.3g} > plain err {base:.3g} + margin"
