"""Objectives against float64 autograd of the formulas of docs/design.md §1, written here independently."""

import math

import pytest
import torch
import torch.nn.functional as F

from omniopd.audit import AuditResult, Fork, get_similarity, score_forks
from omniopd.losses import group_advantages, loss_normalizer, omniopd, omniopd_linear, opd, rl, sft

B, T, V, C = 2, 6, 37, 2


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    ref_logits = torch.randn(B, T, V, generator=g) * 3
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False  # padding at the end of sequence 1
    tokens[1, 5] = -100
    return logits, ref_logits, tokens, mask


def _audit(pi_hat, forks):
    return AuditResult.given([(f.seq, f.anchor, p) for f, p in zip(forks, pi_hat)], batch_size=B, chunk_len=C)


def design_omniopd(z, zr, y, mask, chunks, beta, norm):
    """docs/design.md §1 step 6 literally: −π̂·log π_θ(y_t) on audited tokens, β·KL(π_ref‖π_θ) on the rest."""
    logp, logq = torch.log_softmax(z, -1), torch.log_softmax(zr, -1)
    total, audited = 0.0, set()
    for (b, a), w in chunks:
        for t in range(a, a + C):
            total = total - w * logp[b, t, y[b, t]]
            audited.add((b, t))
    for b in range(z.shape[0]):
        for t in range(z.shape[1]):
            if mask[b, t] and (b, t) not in audited:
                total = total + beta * (logq[b, t].exp() * (logq[b, t] - logp[b, t])).sum()
    return total / norm


def test_omniopd_value_and_gradient_match_float64_formula():
    logits, ref_logits, tokens, mask = _inputs()
    chunks = [((0, 1), 0.3), ((0, 4), 0.9), ((1, 2), 0.55)]
    audit = _audit([w for _, w in chunks], [Fork(b, a, "", "") for (b, a), _ in chunks])
    beta, norm = 0.2, 2.0
    z = logits.clone().requires_grad_(True)
    loss, metrics = omniopd(z, ref_logits, tokens, mask, audit, beta=beta, normalizer=norm)
    loss.backward()
    z64 = logits.double().requires_grad_(True)
    ref = design_omniopd(z64, ref_logits.double(), tokens, mask, chunks, beta, norm)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)
    assert metrics["loss/pg"] + metrics["loss/kl"] == pytest.approx(metrics["loss/total"], rel=1e-6)
    assert metrics["loss/audited_tokens"] == 6 and metrics["loss/kl_tokens"] == 5


def test_pi_hat_carries_no_gradient():
    logits, ref_logits, tokens, mask = _inputs(1)
    z = logits.clone().requires_grad_(True)
    # old log-probs taken straight from the graph: if π̂ kept a gradient it would flow back through them
    old_lp = torch.log_softmax(z, -1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)
    forks = [Fork(0, 0, "", "ab"), Fork(1, 2, "", "cd")]
    audit = score_forks(torch.tensor([[0], [2]]), forks, [["ab", "xb"], ["cd", "cd"]], old_lp, get_similarity("ned"),
                        n=2, alpha=1.0,
                        chunk_len=C)
    assert not audit.pi_hat.requires_grad and not audit.pi_bar.requires_grad
    loss, _ = omniopd(z, ref_logits, tokens, mask, audit, beta=0.1, normalizer=2)
    loss.backward()
    z64 = logits.double().requires_grad_(True)
    chunks = [((0, 0), audit.pi_hat[0, 0].item()), ((1, 2), audit.pi_hat[1, 0].item())]
    design_omniopd(z64, ref_logits.double(), tokens, mask, chunks, 0.1, 2).backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)


def test_linear_form_matches_logits_form():
    g = torch.Generator().manual_seed(2)
    d = 8
    hidden, ref_hidden = torch.randn(B, T, d, generator=g), torch.randn(B, T, d, generator=g)
    w, ref_w = torch.randn(V, d, generator=g), torch.randn(V, d, generator=g)
    _, _, tokens, mask = _inputs()
    chunks = [((0, 2), 0.4), ((1, 0), 0.7)]
    audit = _audit([p for _, p in chunks], [Fork(b, a, "", "") for (b, a), _ in chunks])
    h = hidden.clone().requires_grad_(True)
    loss, _ = omniopd_linear(h, w, ref_hidden, ref_w, tokens, mask, audit, beta=0.3, normalizer=2)
    loss.backward()
    h64 = hidden.double().requires_grad_(True)
    ref = design_omniopd(h64 @ w.double().T, ref_hidden.double() @ ref_w.double().T, tokens, mask, chunks, 0.3, 2)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)


def test_normalizer_independent_of_audited_chunks():
    _, _, _, mask = _inputs()
    assert loss_normalizer("sequences", mask).item() == 2
    assert loss_normalizer("tokens", mask).item() == 11
    with pytest.raises(ValueError, match="objective.normalizer='chunks'"):
        loss_normalizer("chunks", mask)
    logits, ref_logits, tokens, mask = _inputs()
    with pytest.raises(ValueError, match="normalizer must be"):
        omniopd(logits, ref_logits, tokens, mask, _audit([], []), beta=0.1, normalizer=0)
    with pytest.raises(ValueError, match="overlaps"):
        omniopd(logits, ref_logits, tokens, mask, _audit([0.5, 0.5], [Fork(0, 1, "", ""), Fork(0, 2, "", "")]),
                beta=0.1, normalizer=2)
    with pytest.raises(ValueError, match="sequence 1, anchor 4"):  # runs into padding
        omniopd(logits, ref_logits, tokens, mask, _audit([0.5], [Fork(1, 4, "", "")]), beta=0.1, normalizer=2)


def test_opd_teacher_equal_to_student_gives_zero_advantage():
    logits, _, tokens, mask = _inputs()
    z = logits.clone().requires_grad_(True)
    loss, metrics = opd(z, tokens, mask, normalizer=2, teacher_logits=logits.clone())
    loss.backward()
    assert metrics["opd/advantage_mean"] == 0.0 and loss.item() == 0.0
    assert torch.count_nonzero(z.grad) == 0
    z.grad = None
    loss, metrics = opd(z, tokens, mask, normalizer=2, teacher_logits=logits.clone(), exact=True)
    loss.backward()
    assert abs(metrics["opd/reverse_kl_mean"]) < 1e-6 and z.grad.abs().max() < 1e-6


def test_opd_matches_float64_reference():
    logits, teacher, tokens, mask = _inputs(3)
    y = tokens.clamp(min=0)
    z64 = logits.double().requires_grad_(True)
    logp = torch.log_softmax(z64, -1).gather(-1, y[..., None]).squeeze(-1)
    logp_t = torch.log_softmax(teacher.double(), -1).gather(-1, y[..., None]).squeeze(-1)
    adv = (logp_t - logp).detach()
    (-(adv * logp)[mask].sum() / 2).backward()
    z = logits.clone().requires_grad_(True)
    loss, metrics = opd(z, tokens, mask, normalizer=2, teacher_logprobs=logp_t.float())
    loss.backward()
    assert metrics["opd/advantage_mean"] == pytest.approx(adv[mask].mean().item(), abs=1e-5)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-5)

    z64.grad = None
    lp, lq = torch.log_softmax(z64, -1), torch.log_softmax(teacher.double(), -1)
    rkl = (lp.exp() * (lp - lq)).sum(-1)
    (rkl[mask].sum() / 2).backward()
    z.grad = None
    loss, metrics = opd(z, tokens, mask, normalizer=2, teacher_logits=teacher, exact=True)
    loss.backward()
    assert metrics["opd/reverse_kl_mean"] == pytest.approx(rkl[mask].mean().item(), rel=1e-5)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same tokenizer"):
        opd(z, tokens, mask, normalizer=2, teacher_logits=teacher[..., :5])


def test_sft_equals_cross_entropy():
    logits, _, tokens, mask = _inputs(4)
    z = logits.clone().requires_grad_(True)
    loss, _ = sft(z, tokens, mask)
    loss.backward()
    z2 = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(z2[mask], tokens[mask])
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-5, atol=1e-7)


def test_rl_group_advantages_hand_checked():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, population std 0.5; group 2: all equal -> no signal
    torch.testing.assert_close(group_advantages(rewards, 4, scale_std=False),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    s = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(group_advantages(rewards, 4), torch.tensor([s, -s, -s, s, 0, 0, 0, 0]))
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), 2), torch.tensor([1 / (1 + 1e-6),
                                                                                           -1 / (1 + 1e-6)]))
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(rewards, 3)


def test_rl_loss_matches_float64_reference():
    logits, ref_logits, tokens, mask = _inputs(5)
    rewards, beta = torch.tensor([1.0, 0.0]), 0.1
    z = logits.clone().requires_grad_(True)
    loss, metrics = rl(z, ref_logits, tokens, mask, rewards, group_size=2, beta=beta, normalizer=2,
                       scale_std=False)
    loss.backward()
    z64 = logits.double().requires_grad_(True)
    lp, lq = torch.log_softmax(z64, -1), torch.log_softmax(ref_logits.double(), -1)
    logp = lp.gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    adv = torch.tensor([0.5, -0.5], dtype=torch.float64)[:, None]  # hand: r − group mean
    ref = ((-adv * logp + beta * kl)[mask]).sum() / 2
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)
    assert metrics["kl/response_mean"] == pytest.approx(kl[mask].mean().item(), rel=1e-5)
    assert math.isclose(metrics["rl/reward_mean"], 0.5)


def test_padding_rows_cannot_poison_the_loss():
    logits, ref_logits, tokens, mask = _inputs(6)
    logits[1, 5, 0] = float("-inf")  # padding row whose placeholder token has probability 0
    audit = _audit([0.5], [Fork(0, 0, "", "")])
    runs = {
        "omniopd": lambda z: omniopd(z, ref_logits, tokens, mask, audit, beta=0.1, normalizer=2),
        "opd": lambda z: opd(z, tokens, mask, normalizer=2, teacher_logits=ref_logits),
        "sft": lambda z: sft(z, tokens, mask),
        "rl": lambda z: rl(z, ref_logits, tokens, mask, torch.tensor([1.0, 0.0]), group_size=2, beta=0.1,
                           normalizer=2),
    }
    for name, run in runs.items():
        z = logits.clone().requires_grad_(True)
        loss, _ = run(z)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all(), name
