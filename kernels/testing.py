"""The tolerance rule the kernels are held to (Cut Cross-Entropy's), for tests and benchmarks alike.

A kernel's error against a float64 reference may not exceed the error of plain PyTorch on the same
inputs (the naive reference run in fp32) plus a margin relative to max(1, max|reference|), and no
output may be NaN (outputs are NaN-prefilled, so an element never written shows up).
"""

from __future__ import annotations

import torch


def max_abs_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| in float64 on the CPU (0 for empty tensors)."""
    return float((x.detach().double().cpu() - ref.detach().double().cpu()).abs().max()) if x.numel() else 0.0


def close_rule(kernel: torch.Tensor, ref64: torch.Tensor, plain: torch.Tensor, margin: float) -> tuple[bool, str]:
    """(passes, one-line account) of `err(kernel) <= err(plain) + margin * max(1, max|ref64|)`, no NaN."""
    kernel, ref64, plain = kernel.detach(), ref64.detach(), plain.detach()
    if kernel.shape != ref64.shape:
        return False, f"shape {tuple(kernel.shape)} vs reference {tuple(ref64.shape)}"
    if torch.isnan(kernel).any():
        return False, "NaN in output (unwritten element?)"
    scale = max(1.0, float(ref64.abs().max())) if ref64.numel() else 1.0
    err, base = max_abs_err(kernel, ref64), max_abs_err(plain, ref64)
    ok = err <= base + margin * scale
    return ok, f"err {err:.3g} {'<=' if ok else '>'} plain err {base:.3g} + margin {margin:g} x {scale:.3g}"


def assert_close_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, plain: torch.Tensor,
                      margin: float) -> None:
    """`close_rule` as an assertion that names the output."""
    ok, account = close_rule(kernel, ref64, plain, margin)
    assert ok, f"{name}: {account}"
