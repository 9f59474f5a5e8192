"""Fused-linear ops (linear_entropy_logprob, linear_omniopd_loss) vs float64 with materialized logits."""

import pytest
import torch
from kernel_testing import GRAD_MARGIN, MARGIN, assert_close_rule, device_for

from omniopd_kernels import entropy_logprob, linear_entropy_logprob, linear_logprob_kl, linear_omniopd_loss
from omniopd_kernels.linear_entropy_logprob import linear_entropy_logprob_naive
from omniopd_kernels.linear_omniopd_loss import linear_logprob_kl_naive, linear_omniopd_loss_naive

# The Triton interpreter evaluates both arms of tl.where in numpy: 0*(-inf) in the discarded arm warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

N, V, D = 37, 1009, 67
# The fused-linear ops have two Triton backends: `triton` (fp32 matmul logits per row chunk streamed through
# the row kernels, the CUDA default) and `triton_tiles` (tl.dot tiles, logits never written).
PATHS = ["torch", "triton_tiles", "triton"]


def _leaf(t, dev, dtype):
    return t.to(dtype).to(dev).clone().requires_grad_()


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize(("dtype", "tau", "use_bias", "use_tok"), [
    (torch.float32, 1.0, False, True),
    (torch.bfloat16, 0.7, True, True),
    (torch.float32, 1.3, True, False),
])
def test_linear_entropy_logprob(backend, dtype, tau, use_bias, use_tok):
    g = torch.Generator().manual_seed(3)
    h = (torch.randn(N, D, generator=g) * 2).to(dtype).double()  # values exactly representable in dtype
    w = (torch.randn(V, D, generator=g) * 0.5).to(dtype).double()
    b = torch.randn(V, generator=g).to(dtype).double() if use_bias else None
    tok = torch.randint(0, V, (N,), generator=g) if use_tok else None
    ge, gl, gs = (torch.randn(N, generator=g) for _ in range(3))
    dev = device_for(backend)

    def run(h_, w_, b_, tok_, fn, **kw):
        ent, lp, lse = fn(h_, w_, tok_, **kw)
        loss = (ent * ge.to(ent)).sum() + (lse * gs.to(lse)).sum()
        if lp is not None:
            loss = loss + (lp * gl.to(lp)).sum()
        loss.backward()
        return ent, lp, lse

    hk, wk = _leaf(h, dev, dtype), _leaf(w, dev, dtype)
    bk = _leaf(b, dev, dtype) if use_bias else None
    outs = run(hk, wk, bk, None if tok is None else tok.to(dev), linear_entropy_logprob, bias=bk, temperature=tau,
               backend=backend)
    h64, w64 = h.clone().requires_grad_(), w.clone().requires_grad_()
    b64 = b.clone().requires_grad_() if use_bias else None
    ref = run(h64, w64, b64, tok, lambda h_, w_, t_: linear_entropy_logprob_naive(h_, w_, t_, b64, tau))
    hp, wp = h.float().requires_grad_(), w.float().requires_grad_()
    bp = b.float().requires_grad_() if use_bias else None
    plain = run(hp, wp, bp, tok, lambda h_, w_, t_: linear_entropy_logprob_naive(h_, w_, t_, bp, tau))
    for label, k, r, p in zip(("entropy", "logprob", "lse"), outs, ref, plain):
        if r is None:
            assert k is None
            continue
        assert_close_rule(label, k, r, p, MARGIN[dtype])
    assert_close_rule("d_hidden", hk.grad, h64.grad, hp.grad.to(dtype), GRAD_MARGIN[dtype])
    assert_close_rule("d_weight", wk.grad, w64.grad, wp.grad.to(dtype), GRAD_MARGIN[dtype])
    if use_bias:
        assert_close_rule("d_bias", bk.grad, b64.grad, bp.grad.to(dtype), GRAD_MARGIN[dtype])


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize(("dtype", "tau"), [(torch.float32, 1.0), (torch.bfloat16, 0.8)])
def test_linear_omniopd_loss(backend, dtype, tau):
    g = torch.Generator().manual_seed(5)
    h = (torch.randn(N, D, generator=g) * 2).to(dtype).double()
    w = (torch.randn(V, D, generator=g) * 0.5).to(dtype).double()
    rh = (h + torch.randn(N, D, generator=g).double() * 0.3).to(dtype).double()
    rw = (w + torch.randn(V, D, generator=g).double() * 0.05).to(dtype).double()
    tok = torch.randint(0, V, (N,), generator=g)
    km = torch.rand(N, generator=g) > 0.5
    wt = torch.where(km, 0.0, torch.rand(N, generator=g))
    wt[:2], km[:2] = 0.0, False  # fully masked rows
    beta = 0.21
    dev = device_for(backend)
    hk, wk = _leaf(h, dev, dtype), _leaf(w, dev, dtype)
    rhk, rwk = _leaf(rh, dev, dtype), _leaf(rw, dev, dtype)
    loss = linear_omniopd_loss(hk, wk, rhk, rwk, tok.to(dev), wt.to(dev), km.to(dev), beta, temperature=tau,
                               backend=backend)
    loss.backward()
    assert rhk.grad is None and rwk.grad is None, "the reference head must get no gradient"
    h64, w64 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = linear_omniopd_loss_naive(h64, w64, rh, rw, tok, wt.double(), km, beta, tau)
    ref.backward()
    hp, wp = h.float().requires_grad_(), w.float().requires_grad_()
    plain = linear_omniopd_loss_naive(hp, wp, rh.float(), rw.float(), tok, wt, km, beta, tau)
    plain.backward()
    assert_close_rule("loss", loss, ref, plain, MARGIN[dtype] * N)
    assert_close_rule("d_hidden", hk.grad, h64.grad, hp.grad.to(dtype), GRAD_MARGIN[dtype])
    assert_close_rule("d_weight", wk.grad, w64.grad, wp.grad.to(dtype), GRAD_MARGIN[dtype])
    assert float(hk.grad[:2].abs().max()) == 0.0
    lp, kl = linear_logprob_kl(hk.detach(), wk.detach(), rhk.detach(), rwk.detach(), tok.to(dev), temperature=tau,
                               backend=backend)
    rlp, rkl = linear_logprob_kl_naive(h, w, rh, rw, tok, tau)
    plp, pkl = linear_logprob_kl_naive(h.float(), w.float(), rh.float(), rw.float(), tok, tau)
    assert_close_rule("logprob", lp, rlp, plp, MARGIN[dtype])
    assert_close_rule("kl", kl, rkl, pkl, MARGIN[dtype])


@pytest.mark.parametrize("backend", PATHS)
def test_gradcheck_tiny(backend):
    dev = device_for(backend)
    f64 = dict(dtype=torch.float64, device=dev)
    h = torch.randn(3, 5, **f64, requires_grad=True)
    w = torch.randn(9, 5, **f64, requires_grad=True)
    b = torch.randn(9, **f64, requires_grad=True)
    rh, rw = torch.randn(3, 5, **f64), torch.randn(9, 5, **f64)
    tok = torch.tensor([0, 8, 4], device=dev)
    kw = dict(eps=1e-3, atol=3e-3, rtol=3e-3, fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_entropy_logprob(h, w, tok, bias=b, temperature=0.9, backend=backend), (h, w, b), **kw)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_logprob_kl(h, w, rh, rw, tok, backend=backend), (h, w), **kw)


def test_backend_is_an_explicit_checked_argument():
    h, w, tok = torch.randn(4, 6), torch.randn(10, 6), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="backend must be one of .*'triton_tiles'.*got 'fused'"):
        linear_entropy_logprob(h, w, tok, backend="fused")
    with pytest.raises(ValueError, match="backend must be one of .*got 'triton_tiles'"):  # linear ops only
        entropy_logprob(torch.randn(4, 10), tok, backend="triton_tiles")


def test_bad_inputs_name_the_argument():
    h, w = torch.randn(4, 6), torch.randn(10, 6)
    with pytest.raises(ValueError, match="weight"):
        linear_entropy_logprob(h, torch.randn(10, 5))
    with pytest.raises(ValueError, match="bias"):
        linear_entropy_logprob(h, w, bias=torch.randn(9))
    with pytest.raises(ValueError, match="ref_hidden"):
        linear_omniopd_loss(h, w, torch.randn(5, 6), w, torch.zeros(4, dtype=torch.long), torch.ones(4),
                            torch.ones(4), 0.1)


@pytest.mark.parametrize("backend", PATHS)
def test_backward_row_chunks(backend, monkeypatch):
    """A tiny scratch budget forces several backward row chunks (and several fused-loss chunks)."""
    from omniopd_kernels import _linear_tiles

    monkeypatch.setattr(_linear_tiles, "BWD_CHUNK_BYTES", 1)
    monkeypatch.setattr("omniopd_kernels._common.TORCH_CHUNK_ELEMS", 1)
    dev = device_for(backend)
    g = torch.Generator().manual_seed(11)
    n, v, d = 70, 257, 33  # 32-row chunks: 32 + 32 + 6
    h, w = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(v, d, generator=g, dtype=torch.float64)
    rh, rw = h + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64), w.clone()
    tok = torch.randint(0, v, (n,), generator=g)
    km = torch.rand(n, generator=g) > 0.5
    wt = torch.where(km, 0.0, 1.0).double()
    hk, wk = _leaf(h, dev, torch.float32), _leaf(w, dev, torch.float32)
    loss = linear_omniopd_loss(hk, wk, rh.float().to(dev), rw.float().to(dev), tok.to(dev), wt.float().to(dev),
                               km.to(dev), 0.5, backend=backend)
    ent = linear_entropy_logprob(hk, wk, tok.to(dev), backend=backend)[0]
    (loss + ent.sum()).backward()
    h64, w64 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = linear_omniopd_loss_naive(h64, w64, rh, rw, tok, wt, km, 0.5)
    (ref + linear_entropy_logprob_naive(h64, w64, tok)[0].sum()).backward()
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hk.grad.double().cpu(), h64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wk.grad.double().cpu(), w64.grad, rtol=1e-4, atol=1e-4)
