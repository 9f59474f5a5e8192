"""Shared test setup: offline hub, Triton interpreter on CPU-only hosts, threads, the vendored benchmark data."""

import os
from pathlib import Path

import pytest

# Nothing may come from a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests start servers and trainer subprocesses beside the test process: with more torch threads than
# free cores, OpenMP spin-waiting makes everything many times slower (measured ~20x on 2 busy cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton kernels run on CPU tensors only under the interpreter; it must be set before triton imports.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

# The session-scoped real vLLM OpenAI-compatible server (tests/vllm_server.py).
pytest_plugins = ["vllm_server"]

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def benchmark_data() -> Path:
    """The benchmark sets vendored in the repository (data/benchmarks, see its README)."""
    path = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
    if not (path / "math").is_dir():
        raise FileNotFoundError(f"{path / 'math'} is missing: the vendored benchmark sets are part of the repository")
    return path
