"""entropy_logprob: forward and gradients vs float64, both backends, odd shapes, edge-case logits."""

import zlib

import pytest
import torch
from kernel_testing import BACKENDS, GRAD_MARGIN, MARGIN, assert_close_rule, device_for

from omniopd_kernels import entropy_logprob
from omniopd_kernels.entropy_logprob import entropy_logprob_naive

# The Triton interpreter evaluates both arms of tl.where in numpy: 0*(-inf) in the discarded arm warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

N, V = 37, 1009
CASES = {
    # name: (dtype, logits builder, temperature, with tokens)
    "fp32": (torch.float32, lambda g: torch.randn(N, V, generator=g) * 3, 1.0, True),
    "bf16_tau": (torch.bfloat16, lambda g: torch.randn(N, V, generator=g) * 3, 0.7, True),
    "all_negative": (torch.float32, lambda g: -50 - 10 * torch.rand(N, V, generator=g), 1.3, True),
    "huge": (torch.float32, lambda g: (torch.rand(N, V, generator=g) * 2 - 1) * 1e4, 1.0, True),
    "huge_bf16_notok": (torch.bfloat16, lambda g: (torch.rand(N, V, generator=g) * 2 - 1) * 1e4, 1.0, False),
    "peaked_notok": (torch.float32, lambda g: torch.randn(N, V, generator=g) * 30, 2.0, False),
}


def _run(backend, name):
    dtype, build, tau, with_tok = CASES[name]
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)  # hash() is salted per process
    x = build(g).to(dtype)
    tok = torch.randint(0, V, (N,), generator=g) if with_tok else None
    dev = device_for(backend)
    # Upstream grads on every output (lse included) so every backward term is exercised.
    ge, gl, gs = (torch.randn(N, generator=g) for _ in range(3))

    def loss_of(ent, lp, lse):
        out = (ent * ge.to(ent)).sum() + (lse * gs.to(lse)).sum()
        return out + ((lp * gl.to(lp)).sum() if lp is not None else 0)

    xk = x.to(dev).clone().requires_grad_()
    outs = entropy_logprob(xk, None if tok is None else tok.to(dev), temperature=tau, backend=backend)
    loss_of(*outs).backward()
    x64 = x.double().requires_grad_()
    ref = entropy_logprob_naive(x64, tok, tau)
    loss_of(*ref).backward()
    xp = x.float().clone().requires_grad_()
    plain = entropy_logprob_naive(xp, tok, tau)
    loss_of(*plain).backward()
    return outs, ref, plain, xk.grad, x64.grad, xp.grad, dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_against_float64(backend, case):
    outs, ref, plain, gk, g64, gp, dtype = _run(backend, case)
    for label, k, r, p in zip(("entropy", "logprob", "lse"), outs, ref, plain):
        if r is None:
            assert k is None
            continue
        assert k.dtype == torch.float32
        assert_close_rule(f"{case}/{label}", k, r, p, MARGIN[dtype])
    assert gk.dtype == dtype
    assert_close_rule(f"{case}/grad", gk, g64, gp.to(dtype), GRAD_MARGIN[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_vocab_and_one_hot_rows(backend):
    """-inf logits (masked vocabulary) contribute nothing; a row with one finite logit has H = 0."""
    dev = device_for(backend)
    x = torch.randn(5, 300, dtype=torch.float64)
    x[:, 100:] = float("-inf")
    x[2] = float("-inf")
    x[2, 7] = 1.0
    tok = torch.tensor([0, 1, 7, 3, 99])
    ent, lp, lse = entropy_logprob(x.float().to(dev), tok.to(dev), backend=backend)
    re, rl, rs = entropy_logprob_naive(x, tok)
    torch.testing.assert_close(ent.cpu().double(), re, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp.cpu().double(), rl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), rs, atol=1e-5, rtol=1e-5)
    assert abs(float(ent[2])) < 1e-6 and abs(float(lp[2])) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_tiny(backend):
    dev = device_for(backend)
    x = torch.randn(3, 7, dtype=torch.float64, device=dev, requires_grad=True)
    tok = torch.tensor([0, 6, 3], device=dev)
    f = lambda x: entropy_logprob(x, tok, temperature=0.8, backend=backend)
    # Kernels accumulate in fp32: loose tolerances on the float64 finite differences.
    assert torch.autograd.gradcheck(f, (x,), eps=1e-3, atol=2e-3, rtol=2e-3, fast_mode=True)


def test_empty_and_strided():
    x = torch.randn(8, 50)[:, ::2]  # non-unit last stride is made contiguous
    ent, lp, lse = entropy_logprob(x, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(ent, entropy_logprob_naive(x)[0])
    e0, l0, s0 = entropy_logprob(torch.zeros(0, 11))
    assert e0.shape == (0,) and l0 is None


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="logits"):
        entropy_logprob(torch.randn(4))
    with pytest.raises(TypeError, match="logits"):
        entropy_logprob(torch.ones(4, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        entropy_logprob(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        entropy_logprob(x, torch.full((4,), 10))
    with pytest.raises(TypeError, match="tokens"):
        entropy_logprob(x, torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        entropy_logprob(x, temperature=0.0)
    with pytest.raises(ValueError, match="backend"):
        entropy_logprob(x, backend="cuda")
