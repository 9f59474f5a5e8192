"""Benchmark setup: the measured floors as a fixture, the peak-memory probe and cheap machine info.

Run: `pytest bench/ --benchmark-only`. On CPU the timings mean little (docs/design.md §4); peak memory does.
So on a CPU the kernel cases that time a GPU design (torch.compile, Liger, Triton) skip at once, and the
studies that take minutes each (real trainer runs, vLLM engines: generation, pipeline, step, threads) run only
when their file is named (`pytest bench/test_bench_step.py ...`) or with `--cpu-studies`; the default CPU
run takes a few minutes (README). Timing, floors and CUDA peak memory
come from harness.py, shared with bench/gpu_check.py.
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
# Minutes each on a CPU (real trainer runs and vLLM engines); their CPU results are in bench/results/*_cpu.md.
CPU_STUDIES = ("test_bench_generation.py", "test_bench_pipeline.py", "test_bench_step.py", "test_bench_threads.py")


def pytest_addoption(parser):
    parser.addoption("--cpu-studies", action="store_true",
                     help="on a CPU, also run the multi-minute studies (" + ", ".join(CPU_STUDIES) + ")")


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cuda" or config.getoption("--cpu-studies"):
        return
    named = {Path(arg.split("::")[0]).name for arg in config.args}  # a study named on the command line runs
    skip = pytest.mark.skip(reason="a multi-minute study on a CPU: name its file, or pass --cpu-studies")
    for item in items:
        if item.path.name in CPU_STUDIES and item.path.name not in named:
            item.add_marker(skip)


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
