"""Benchmark setup: device, measured floors (copy bandwidth, matmul rate) and a peak-memory probe.

Run: `pytest bench/ --benchmark-only`. On CPU the timings mean little (DESIGN.md §4); peak memory does.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).resolve().parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, reps: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def floors() -> dict:
    """Measured ceilings of this device: copy bandwidth (bytes/s, read + write) and matmul rate (FLOP/s)."""
    n = (1 << 30) if DEVICE == "cuda" else (1 << 26)
    x = torch.empty(n, dtype=torch.uint8, device=DEVICE).fill_(1)
    y = torch.empty_like(x)
    bw = 2 * n / (_median_ms(lambda: y.copy_(x), 5) * 1e-3)
    m = 8192 if DEVICE == "cuda" else 512
    dt = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    a, b = torch.randn(m, m, device=DEVICE, dtype=dt), torch.randn(m, m, device=DEVICE, dtype=dt)
    rate = 2 * m**3 / (_median_ms(lambda: a @ b, 5) * 1e-3)
    return {"copy_bytes_per_s": bw, "matmul_flops_per_s": rate, "matmul_dtype": str(dt)}


def peak_extra_bytes(op: str, impl: str, shape: dict) -> int:
    """Peak extra memory of one run: CUDA allocator stats on GPU, a fresh process's RSS high-water on CPU."""
    if DEVICE == "cuda":
        from kernel_cases import make_case

        case = make_case(op, impl, shape, DEVICE)
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = case.run()
        sync()
        del out
        return torch.cuda.max_memory_allocated() - base
    res = subprocess.run([sys.executable, str(BENCH_DIR / "cpu_peak.py"), op, impl, json.dumps(shape)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"cpu_peak.py {op} {impl} failed:\n{res.stderr[-2000:]}")
    return int(json.loads(res.stdout.strip().splitlines()[-1])["extra_bytes"])


def pytest_benchmark_generate_machine_info(config):
    """Cheap machine info: the default (py-cpuinfo) took minutes on a loaded 2-core host."""
    import platform

    return {
        "node": platform.node(), "machine": platform.machine(), "system": platform.system(),
        "release": platform.release(), "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(), "cpu": {"count": os.cpu_count()},
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
    }
