"""Shared test setup: offline hub, Triton interpreter on CPU-only hosts, the shared benchmark data."""

import os
from pathlib import Path

import pytest

# Nothing may come from a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run on CPU tensors only under the interpreter; it must be set before triton imports.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The workplace's offline benchmark copies (../shared/data from the repo root)."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (root.parent / "shared" / "data", Path("/work/shared/data")):
        if (candidate / "math").is_dir():
            return candidate
    pytest.skip("../shared/data is not present on this machine")
