"""cosine_similarity vs float64, and the package's import hygiene."""

import subprocess
import sys

import pytest
import torch
from kernel_testing import BACKENDS, assert_close_rule, device_for

from omniopd_kernels import cosine_similarity
from omniopd_kernels.cosine_similarity import cosine_similarity_naive

# The Triton interpreter evaluates both arms of tl.where in numpy: 0*(-inf) in the discarded arm warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_against_float64(backend, dtype):
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(3, 37, 67, generator=g) * 5).to(dtype)
    b = (torch.randn(3, 19, 67, generator=g) * 1e-3).to(dtype)
    a[1, 4] = 0.0  # a zero vector is similar to nothing
    dev = device_for(backend)
    out = cosine_similarity(a.to(dev), b.to(dev), backend=backend)
    assert out.dtype == torch.float32 and out.shape == (3, 37, 19)
    ref = cosine_similarity_naive(a.double(), b.double())
    assert_close_rule("cosine", out, ref, cosine_similarity_naive(a.float(), b.float()), 1e-5)
    assert float(out[1, 4].abs().max()) == 0.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="a"):
        cosine_similarity(torch.randn(2, 3), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="share B and E"):
        cosine_similarity(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


def test_import_pulls_no_heavy_deps():
    """`import omniopd_kernels` stays torch-only: no transformers, no vllm, not even triton until used."""
    code = ("import sys, omniopd_kernels; bad = [m for m in ('transformers', 'vllm', 'triton') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
