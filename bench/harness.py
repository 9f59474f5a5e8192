"""The one benchmark harness: device, timing, floors and peak memory, used by `pytest bench/` and
`bench/gpu_check.py` alike (the per-op setups are in kernel_cases.py, the tolerance rule in
`omniopd_kernels.testing`).

Timing: on CUDA `triton.testing.do_bench` (CUDA events, the L2 cache flushed before every run, the
median); on CPU the median of wall-clock runs. Floors (docs/design.md §4): bytes over the measured
device-to-device copy bandwidth, FLOPs over the measured matmul rate.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # Triton kernels run on CPU tensors only under the interpreter, set before triton imports
    os.environ.setdefault("TRITON_INTERPRET", "1")


REPO = Path(__file__).resolve().parents[1]


def import_kernels() -> ModuleType:
    """`omniopd_kernels` if installed, else straight from the checkout's kernels/ folder (a bare GPU host)."""
    try:
        import omniopd_kernels
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "omniopd_kernels", REPO / "kernels" / "__init__.py", submodule_search_locations=[str(REPO / "kernels")])
        omniopd_kernels = importlib.util.module_from_spec(spec)
        sys.modules["omniopd_kernels"] = omniopd_kernels
        spec.loader.exec_module(omniopd_kernels)
    return omniopd_kernels


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], *, rep_ms: int = 100, cpu_reps: int = 3) -> float:
    """Median time of one fn() call in ms. The first calls warm up (autotuning, compilation, lazy imports)."""
    if DEVICE == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    n = (1 << 30) if DEVICE == "cuda" else (1 << 26)
    x = torch.ones(n, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    return 2 * n / (time_ms(lambda: y.copy_(x), cpu_reps=5) * 1e-3)


def matmul_rate() -> tuple[float, torch.dtype]:
    """(FLOP/s, dtype) of a square matmul on random data: bf16 8192³ on CUDA, fp32 512³ on CPU."""
    n, dt = (8192, torch.bfloat16) if DEVICE == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=DEVICE, dtype=dt), torch.randn(n, n, device=DEVICE, dtype=dt)
    return 2 * n**3 / (time_ms(lambda: a @ b, cpu_reps=5) * 1e-3), dt


def floors() -> dict:
    """The measured ceilings of this device, as recorded next to every benchmark."""
    rate, dt = matmul_rate()
    return {"copy_bytes_per_s": copy_bandwidth(), "matmul_flops_per_s": rate, "matmul_dtype": str(dt)}


def floor_ms(floors_: dict, nbytes: float = 0.0, flops: float = 0.0) -> float:
    """The larger of the memory and the compute floor of one call, in ms."""
    return max(nbytes / floors_["copy_bytes_per_s"], flops / floors_["matmul_flops_per_s"]) * 1e3


def cuda_peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory of one fn() call above what was allocated before it, outputs included."""
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync()
    del out
    return torch.cuda.max_memory_allocated() - base
