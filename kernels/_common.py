"""Shared helpers: backend resolution, input validation, chunk sizing, interpreter detection."""

from __future__ import annotations

import os
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
_BACKENDS = ("auto", "triton", "torch")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# Elements of one fp32 [rows, V] scratch tile of the chunked torch paths (4 MiB).
# Several temporaries live per chunk, so this keeps peak extra memory a few % of [N, V] fp32.
TORCH_CHUNK_ELEMS = 1 << 20


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """`auto` -> `triton` on CUDA tensors, `torch` elsewhere; `triton` on CPU needs TRITON_INTERPRET=1."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    if backend == "triton" and not on_cuda and not interpreting():
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return backend


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
