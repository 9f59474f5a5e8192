"""omniopd_loss / logprob_kl: per-token terms, the scalar loss and its gradient vs float64."""

import pytest
import torch
from kernel_testing import BACKENDS, GRAD_MARGIN, MARGIN, assert_close_rule, device_for

from omniopd_kernels import logprob_kl, omniopd_loss
from omniopd_kernels.omniopd_loss import logprob_kl_naive, omniopd_loss_naive

# The Triton interpreter evaluates both arms of tl.where in numpy: 0*(-inf) in the discarded arm warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

N, V = 37, 1009
CASES = {
    # name: (dtype, scale, shift, temperature)
    "fp32": (torch.float32, 3.0, 0.0, 1.0),
    "bf16_tau": (torch.bfloat16, 3.0, 0.0, 0.7),
    "all_negative": (torch.float32, 2.0, -60.0, 1.0),
    "huge": (torch.float32, 1e4, 0.0, 1.3),
}


def _inputs(case):
    dtype, scale, shift, tau = CASES[case]
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(N, V, generator=g) * scale + shift).to(dtype)
    # Reference close to the student, as in training (the KL anchor), but not equal.
    r = (x.double() + torch.randn(N, V, generator=g).double() * scale * 0.1).to(dtype)
    tok = torch.randint(0, V, (N,), generator=g)
    w = torch.rand(N, generator=g)
    km = torch.rand(N, generator=g) > 0.4
    w[km] = 0.0  # audited tokens carry π̂, unaudited ones the KL
    w[:3], km[:3] = 0.0, False  # fully masked rows: no loss, no gradient
    return x, r, tok, w, km, 0.37, tau, dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_grad_against_float64(backend, case):
    x, r, tok, w, km, beta, tau, dtype = _inputs(case)
    dev = device_for(backend)
    xk = x.to(dev).clone().requires_grad_()
    rk = r.to(dev).clone().requires_grad_()
    loss = omniopd_loss(xk, rk, tok.to(dev), w.to(dev), km.to(dev), beta, temperature=tau, backend=backend)
    loss.backward()
    assert rk.grad is None, "reference logits must get no gradient"
    x64 = x.double().requires_grad_()
    ref = omniopd_loss_naive(x64, r.double(), tok, w.double(), km, beta, tau)
    ref.backward()
    xp = x.float().clone().requires_grad_()
    plain = omniopd_loss_naive(xp, r.float(), tok, w, km, beta, tau)
    plain.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close_rule(f"{case}/loss", loss, ref, plain, MARGIN[dtype] * N)
    assert_close_rule(f"{case}/grad", xk.grad, x64.grad, xp.grad.to(dtype), GRAD_MARGIN[dtype])
    assert float(xk.grad[:3].abs().max()) == 0.0, "fully masked rows must get zero gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_terms_and_reduction_none(backend):
    x, r, tok, w, km, beta, tau, _ = _inputs("fp32")
    dev = device_for(backend)
    lp, kl = logprob_kl(x.to(dev), r.to(dev), tok.to(dev), temperature=tau, backend=backend)
    rlp, rkl = logprob_kl_naive(x.double(), r.double(), tok, tau)
    plp, pkl = logprob_kl_naive(x, r, tok, tau)
    assert_close_rule("logprob", lp, rlp, plp, MARGIN[torch.float32])
    assert_close_rule("kl", kl, rkl, pkl, MARGIN[torch.float32])
    assert float(kl.min()) >= -1e-5
    per = omniopd_loss(x.to(dev), r.to(dev), tok.to(dev), w.to(dev), km.to(dev), beta, temperature=tau,
                       reduction="none", backend=backend)
    assert per.shape == (N,)
    torch.testing.assert_close(per.cpu().double(), -w.double() * rlp + beta * km.double() * rkl, atol=1e-4,
                               rtol=1e-5)
    # Identical student and reference: KL is exactly the zero point.
    _, kl0 = logprob_kl(x.to(dev), x.to(dev), tok.to(dev), backend=backend)
    assert float(kl0.abs().max()) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_tiny(backend):
    dev = device_for(backend)
    x = torch.randn(3, 7, dtype=torch.float64, device=dev, requires_grad=True)
    r = torch.randn(3, 7, dtype=torch.float64, device=dev)
    tok = torch.tensor([0, 6, 3], device=dev)
    f = lambda x: logprob_kl(x, r, tok, temperature=1.5, backend=backend)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-3, atol=2e-3, rtol=2e-3, fast_mode=True)


def test_bad_inputs_name_the_argument():
    x, r, tok = torch.randn(4, 10), torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    w, km = torch.ones(4), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="ref_logits"):
        omniopd_loss(x, torch.randn(4, 11), tok, w, km, 0.1)
    with pytest.raises(ValueError, match="weights"):
        omniopd_loss(x, r, tok, torch.ones(5), km, 0.1)
    with pytest.raises(ValueError, match="kl_mask"):
        omniopd_loss(x, r, tok, w, km[:2], 0.1)
    with pytest.raises(ValueError, match="reduction"):
        omniopd_loss(x, r, tok, w, km, 0.1, reduction="mean")
    with pytest.raises(TypeError, match="beta"):
        omniopd_loss(x, r, tok, w, km, torch.tensor(0.1))
