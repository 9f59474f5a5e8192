"""select_forks vs the brute-force greedy reference: property tests with ties, misfits, min_entropy."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import BACKENDS, device_for

from omniopd_kernels import select_forks
from omniopd_kernels.select_forks import select_forks_naive

# The Triton interpreter evaluates both arms of tl.where in numpy: 0*(-inf) in the discarded arm warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@st.composite
def fork_problems(draw):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 40))
    levels = draw(st.integers(1, 6))  # few distinct entropy values -> many ties
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ent = torch.randint(0, levels, (b, t), generator=g).float() / levels
    # Response regions: a prompt prefix, a response, padding after EOS, sometimes holes.
    valid = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        lo = draw(st.integers(0, t))
        hi = draw(st.integers(lo, t))
        valid[i, lo:hi] = True
    if draw(st.booleans()):
        valid &= torch.rand(b, t, generator=g) > 0.1
    num_chunks = draw(st.integers(0, 8))  # often more than fit
    chunk_len = draw(st.integers(1, 12))
    min_entropy = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.3, 0.5, 2.0])))
    return ent, valid, num_chunks, chunk_len, min_entropy


def _check(ent, valid, num_chunks, chunk_len, min_entropy, backend):
    dev = device_for(backend)
    got = select_forks(ent.to(dev), valid.to(dev), num_chunks, chunk_len, min_entropy=min_entropy, backend=backend)
    ref = select_forks_naive(ent, valid, num_chunks, chunk_len, min_entropy)
    assert got.dtype == torch.int64 and got.shape == (ent.shape[0], num_chunks)
    assert torch.equal(got.cpu(), ref), f"got {got.tolist()} want {ref.tolist()}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fork_problems())
def test_torch_matches_reference(problem):
    _check(*problem, "torch")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fork_problems())
def test_triton_matches_reference(problem):
    _check(*problem, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_cases(backend):
    dev = device_for(backend)
    ent = torch.tensor([[0.1, 0.9, 0.9, 0.2, 0.8, 0.0, 0.7, 0.3]], device=dev)
    valid = torch.ones_like(ent, dtype=torch.bool)
    # Ties go to the lower t: 1 wins over 2; then 4 (overlaps nothing with C=2); then 6.
    assert select_forks(ent, valid, 3, 2, backend=backend).tolist() == [[1, 4, 6]]
    # More chunks than fit: -1 padding, never a made-up anchor (t=7's chunk [7, 9) runs past the end,
    # t=3, 0 and 5 overlap chosen chunks).
    assert select_forks(ent, valid, 6, 2, backend=backend).tolist() == [[1, 4, 6, -1, -1, -1]]
    # A chunk must lie wholly on valid positions (the one at t=1 would cover the masked t=2).
    valid[0, 2] = False
    assert select_forks(ent, valid, 2, 2, backend=backend).tolist() == [[4, 6]]
    assert select_forks(ent, valid, 2, 2, min_entropy=0.75, backend=backend).tolist() == [[4, -1]]
    # NaN entropies are never anchors; empty inputs work.
    ent[0, 4] = float("nan")
    assert select_forks(ent, valid, 1, 2, backend=backend).tolist() == [[6]]
    assert select_forks(ent[:0], valid[:0], 2, 2, backend=backend).shape == (0, 2)


def test_bad_inputs_name_the_argument():
    ent, valid = torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="entropy"):
        select_forks(torch.rand(5), valid, 1, 1)
    with pytest.raises(ValueError, match="valid"):
        select_forks(ent, valid[:, :4], 1, 1)
    with pytest.raises(TypeError, match="valid"):
        select_forks(ent, valid.float(), 1, 1)
    with pytest.raises(ValueError, match="num_chunks"):
        select_forks(ent, valid, -1, 1)
    with pytest.raises(ValueError, match="chunk_len"):
        select_forks(ent, valid, 1, 0)
