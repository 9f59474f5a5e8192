"""Shared helpers: backend resolution and dispatch, input validation, chunk sizing, the chunked LM-head
gradient, interpreter detection."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
# The fused-linear ops have a second Triton path: `triton` makes fp32 logits for a row chunk with a
# matmul (cuBLAS on CUDA) and streams them through the row kernels; `triton_tiles` builds tiles of
# h·Wᵀ with tl.dot and never writes logits (less memory, slower on an H200: see kernels/README.md).
LinearBackend = Literal["auto", "triton", "triton_tiles", "torch"]
_BACKENDS = ("auto", "triton", "torch")
LINEAR_BACKENDS = ("auto", "triton", "triton_tiles", "torch")
# Each op folder holds one module per resolved backend; Triton modules are imported only when used,
# so CPU users of the torch path never import triton.
_MODULES = {"torch": "torch_impl", "triton": "triton_impl", "triton_tiles": "tiles_impl"}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# Elements of one fp32 [rows, V] scratch tile of the chunked torch paths (4 MiB).
# Several temporaries live per chunk, so this keeps peak extra memory a few % of [N, V] fp32.
TORCH_CHUNK_ELEMS = 1 << 20


def resolve_backend(backend: str, *tensors: torch.Tensor, allowed: tuple[str, ...] = _BACKENDS) -> str:
    """`auto` -> `triton` on CUDA tensors, `torch` elsewhere; a Triton backend on CPU needs TRITON_INTERPRET=1."""
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    if backend != "torch" and not on_cuda and not interpreting():
        raise RuntimeError(f"backend={backend!r} on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return backend


def impl_module(package: str, backend: str) -> ModuleType:
    """The module of op folder `package` that implements resolved `backend` (imported on first use)."""
    return importlib.import_module(f"{package}.{_MODULES[backend]}")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def rowmajor(x: torch.Tensor | None) -> torch.Tensor | None:
    """x with unit stride along its last dimension (the kernels index rows by one stride)."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def check_float(name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp32/bf16/fp16/fp64), got {t.dtype}")


def check_tokens(name: str, tokens: torch.Tensor, n: int, vocab: int, device: torch.device) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 1 or tokens.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32, got {tokens.dtype}")
    check_device(name, tokens, device)
    if n and not torch.compiler.is_compiling():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{name} must lie in [0, {vocab}), got values in [{lo}, {hi}]")


def check_vector(name: str, t: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    check_device(name, t, device)


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs on one device)")


def check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def chunk_rows(vocab: int, n: int) -> int:
    """Rows per chunk so that one fp32 [rows, vocab] temporary stays near TORCH_CHUNK_ELEMS elements."""
    return max(1, min(n, TORCH_CHUNK_ELEMS // max(vocab, 1)))


def grad_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """dtype of the logits gradient fed to the head matmuls: half when both operands are half
    (cuBLAS still accumulates in fp32), fp32 otherwise."""
    if hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16):
        return hidden.dtype
    return torch.float32


def head_grads(
    hidden: torch.Tensor, weight: torch.Tensor, step: int,
    chunk_grad: Callable[[int, int, torch.Tensor | None], torch.Tensor], *,
    bias: torch.Tensor | None = None, dtype: torch.dtype | None = None, scratch: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(d_hidden, d_weight, d_bias) of `logits = hidden @ weight.T + bias`, `step` rows at a time.

    `chunk_grad(s, e, out)` returns the [e - s, V] gradient of rows s:e's logits; with `scratch` it may
    write into `out`, one [step, V] buffer of `dtype` reused by every chunk (else `out` is None).
    Returns d_hidden in hidden's dtype (NaN-prefilled, so an unwritten row shows), d_weight in `dtype`
    (default `grad_dtype`) and d_bias in fp32, or None without a bias.
    """
    n, v = hidden.shape[0], weight.shape[0]
    dtype = dtype or grad_dtype(hidden, weight)
    w_mm = weight.to(dtype)
    dh = torch.full_like(hidden, float("nan"))
    dw = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
    db = None if bias is None else torch.zeros(v, dtype=torch.float32, device=weight.device)
    buf = torch.empty((min(step, n), v), dtype=dtype, device=hidden.device) if scratch and n else None
    for s in range(0, n, step):
        e = min(n, s + step)
        dz = chunk_grad(s, e, None if buf is None else buf[: e - s])
        dh[s:e] = dz @ w_mm
        dw.addmm_(dz.T, hidden[s:e].to(dtype))
        if db is not None:
            db += dz.float().sum(0)
    return dh, dw, db
