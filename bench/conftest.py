"""Benchmark setup: the measured floors as a fixture, the peak-memory probe and cheap machine info.

Run: `pytest bench/ --benchmark-only`. On CPU the timings mean little (docs/design.md §4); peak memory does.
Timing, floors and CUDA peak memory come from harness.py, shared with bench/gpu_check.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import DEVICE, cuda_peak_extra_bytes
from harness import floors as measure_floors

BENCH_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def floors() -> dict:
    """Measured ceilings of this device: copy bandwidth (bytes/s, read + write) and matmul rate (FLOP/s)."""
    return measure_floors()


def peak_extra_bytes(op: str, impl: str, shape: dict) -> int:
    """Peak extra memory of one run: CUDA allocator stats on GPU, a fresh process's RSS high-water on CPU."""
    if DEVICE == "cuda":
        from kernel_cases import make_case

        return cuda_peak_extra_bytes(make_case(op, impl, shape, DEVICE).run)
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
