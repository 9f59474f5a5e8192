"""The step's omniopd loss takes the kernels' summed path (issue 26): `linear_omniopd_loss_terms`, whose Triton
backend makes the gradients inside the forward, gives the loss and its pg / KL split without per-token output.

The Triton backend runs under the interpreter (TRITON_INTERPRET=1, set by conftest on a machine without a GPU)
at small shapes; a spy counts which Triton entry the step's loss calls."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omniopd.audit import fork_requests, get_similarity, pick_forks
from omniopd.audit.loss import audited_loss
from omniopd.batch import model_head, pack
from omniopd.config import load_config
from omniopd.data import Problem
from omniopd.losses import entropy_logprob
from omniopd.pipeline import Prepared
from omniopd.rollout.student import Sample
from omniopd.rollout.teachers import TeacherResult
from omniopd.runlog import StepTimer
from omniopd_kernels import linear_omniopd_loss, linear_omniopd_loss_terms
from omniopd_kernels.linear_omniopd_loss import linear_logprob_kl_naive

# The op folder's module (the package attribute of the same name is the function).
linear_triton = importlib.import_module("omniopd_kernels.linear_omniopd_loss.triton_impl")


def _device() -> str:
    import os

    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("the Triton backend needs CUDA or TRITON_INTERPRET=1")


def _split_reference(h, w, rh, rw, tok, weights, kl_mask, beta):
    """float64 `(pg, kl)` sums from materialized logits."""
    lp, kl = linear_logprob_kl_naive(h.double(), w.double(), rh.double(), rw.double(), tok)
    return (-weights.double() * lp).sum(), (beta * kl_mask.double() * kl).sum()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_terms_equal_the_summed_loss_and_the_float64_split(backend):
    dev = _device() if backend == "triton" else "cpu"
    g = torch.Generator().manual_seed(0)
    n, v, d = 37, 101, 24
    h, w = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) * 0.3
    rh, rw = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) * 0.3
    tok = torch.randint(v, (n,), generator=g)
    audited = torch.rand(n, generator=g) < 0.3
    weights = torch.where(audited, torch.rand(n, generator=g), 0.0)
    kl_mask = ~audited & (torch.arange(n) < 30)  # the last rows: padding, in neither term
    beta = 0.2
    grads = {}
    for name in ("terms", "sum"):
        hk, wk = h.clone().to(dev).requires_grad_(), w.clone().to(dev).requires_grad_()
        args = (hk, wk, rh.to(dev), rw.to(dev), tok.to(dev), weights.to(dev), kl_mask.to(dev), beta)
        if name == "terms":
            loss, pg, kl = linear_omniopd_loss_terms(*args, backend=backend)
            assert not pg.requires_grad and not kl.requires_grad
            ref_pg, ref_kl = _split_reference(h, w, rh, rw, tok, weights, kl_mask, beta)
            torch.testing.assert_close(pg.double().cpu(), ref_pg, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kl.double().cpu(), ref_kl, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loss.detach(), pg + kl)
        else:
            loss = linear_omniopd_loss(*args, backend=backend)  # the existing call: a scalar, unchanged
            assert loss.dim() == 0
        loss.backward()
        grads[name] = (hk.grad.cpu(), wk.grad.cpu())
    for a, b in zip(grads["terms"], grads["sum"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _tiny_step(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model, ref_model = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    lengths = [(5, 12), (3, 9), (7, 12)]
    samples = [Sample(torch.randint(96, (p,), generator=gen).tolist(), torch.randint(96, (t,), generator=gen).tolist(),
                      "", "length", [0.0] * t) for p, t in lengths]
    batch = pack([Problem(str(i), "q", "1") for i in range(3)], samples, 0, torch.device("cpu"))
    return model, ref_model, batch


class _Digits:
    """A tokenizer stand-in that decodes token ids to text (fork prefixes and chunks)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_the_steps_loss_takes_the_fused_sum_path_on_triton(tmp_path, monkeypatch):
    """The audited loss the trainer calls, forced onto Triton: one call into the gradients-in-the-forward entry,
    none into the per-token forward; its loss, pg/KL split and gradients equal the torch backend's."""
    _device()
    cfg = load_config(["--audit.num_chunks=2", "--audit.chunk_len=3", "--audit.num_continuations=2",
                       "--audit.similarity=ned", "--objective.beta=0.1"])
    model, ref_model, batch = _tiny_step(tmp_path)
    with torch.no_grad():
        entropy, logprob = entropy_logprob(model_head(model, batch, torch.float32), batch.tokens, batch.response_mask)
    ids = [p.id for p in batch.problems]
    anchors, forks, m = pick_forks(entropy, batch.response_mask, batch.responses, ids, _Digits(), 0, cfg)
    assert len(forks) == 6 and len(fork_requests(forks, batch.problems, cfg, 0, 0)) == 6
    # Teachers that agree with the chunk, half-agree, or fail: kept, partly scored and dropped forks.
    results = [TeacherResult([f.chunk_text, f.chunk_text if i % 2 else "x y z"] if i != 5 else None,
                             None if i != 5 else "down") for i, f in enumerate(forks)]
    prepared = Prepared(batch, torch.zeros(3), 3.0, entropy, logprob, anchors, forks, m, job=None, version=0)
    calls = {"terms": 0, "per_token": 0}
    terms, forward = linear_triton.terms_with_grads, linear_triton.forward

    def spy_terms(*args, **kwargs):
        calls["terms"] += 1
        return terms(*args, **kwargs)

    def spy_forward(*args, **kwargs):
        calls["per_token"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(linear_triton, "terms_with_grads", spy_terms)
    monkeypatch.setattr(linear_triton, "forward", spy_forward)
    out = {}
    for backend in ("triton", "torch"):
        model.zero_grad(set_to_none=True)
        head = model_head(model, batch, torch.float32)
        with torch.no_grad():
            ref = model_head(ref_model, batch, torch.float32)
        loss, metrics = audited_loss(prepared, head, ref, results, cfg, get_similarity("ned"), StepTimer(),
                                     backend=backend)
        loss.backward()
        out[backend] = (loss.item(), metrics, [p.grad.clone() for p in model.parameters()])
        if backend == "triton":
            assert calls == {"terms": 1, "per_token": 0}  # the summed path, gradients made in the forward
    (l_tri, m_tri, g_tri), (l_torch, m_torch, g_torch) = out["triton"], out["torch"]
    assert m_tri["audit/chunks_audited"] == 5 and m_tri["audit/chunks_dropped"] == 1
    assert l_tri == pytest.approx(l_torch, rel=1e-5)
    for key in ("loss/pg", "loss/kl", "kl/unaudited_mean"):
        assert m_tri[key] == pytest.approx(m_torch[key], rel=1e-5, abs=1e-7), key
    assert m_tri["loss/pg"] != 0 and m_tri["loss/kl"] > 0
    assert m_tri["loss/total"] == pytest.approx(m_tri["loss/pg"] + m_tri["loss/kl"], rel=1e-6)
    for a, b in zip(g_tri, g_torch):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_padding_row_with_a_minus_inf_logprob_adds_zero(backend):
    """The guard the per-token path had (select, not multiply): a padding row (weight 0, no KL) whose placeholder
    token has log-prob −inf adds 0 to both terms, where the plain weighted sum is NaN."""
    dev = _device() if backend == "triton" else "cpu"
    g = torch.Generator().manual_seed(0)
    n, v, d = 5, 11, 4
    h, w = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g)
    h[:, 0], w[0, 0], h[4, 0] = 0.0, -1e30, 1e10  # row 4's logit of token 0 overflows to −inf; the others are 0
    rw = w + 0.1 * torch.randn(v, d, generator=g)
    tok = torch.tensor([1, 2, 3, 4, 0])
    weights, kl_mask = torch.tensor([0.5, 0.0, 0.0, 0.2, 0.0]), torch.tensor([False, True, True, False, False])
    args = (h.to(dev), w.to(dev), h.to(dev), rw.to(dev), tok.to(dev), weights.to(dev), kl_mask.to(dev), 0.1)
    assert torch.isnan(linear_omniopd_loss(*args, backend=backend))  # what the guard is for
    hk, wk = h.clone().to(dev).requires_grad_(), w.clone().to(dev).requires_grad_()
    loss, pg, kl = linear_omniopd_loss_terms(hk, wk, *args[2:], backend=backend)
    ref_pg, ref_kl = _split_reference(h[:4], w, h[:4], rw, tok[:4], weights[:4], kl_mask[:4], 0.1)
    torch.testing.assert_close(pg.double().cpu(), ref_pg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl.double().cpu(), ref_kl, rtol=1e-5, atol=1e-5)
    assert kl > 0
    loss.backward()
    assert torch.isfinite(hk.grad).all() and torch.isfinite(wk.grad).all()
