"""The paper's ablations, one flag each, each changing exactly what it names (docs/design.md §1, "Ablations"):
`objective.beta=0` (no KL anchor; the KL is still measured), `audit.alpha=0` (no smoothing: π̂ = k_sem/N),
`audit.selection=random` (tests/test_fork_selection.py, and in a real step below); `objective.beta` is
omniopd's alone (the rl baseline has `objective.rl_beta`)."""

from __future__ import annotations

import pytest
import torch
from test_losses import B, T, V, _inputs, design_omniopd

from omniopd.audit import AuditResult, Fork, acceptance_target, get_similarity, score_forks
from omniopd.config import load_config
from omniopd.losses import Head, omniopd

C = 2


def _kl_unaudited(z, zr, mask, audited):
    """float64 mean KL(π_ref ‖ π_θ) over the response tokens outside the audited chunks."""
    logp, logq = torch.log_softmax(z.double(), -1), torch.log_softmax(zr.double(), -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    keep = mask.clone()
    for b, t in audited:
        keep[b, t] = False
    return kl[keep].mean().item()


def test_beta_zero_drops_the_anchor_from_the_loss_and_still_measures_the_kl():
    logits, ref_logits, tokens, mask = _inputs(3)
    chunks = [((0, 1), 0.6), ((1, 2), 0.3)]
    audit = AuditResult.given([(b, a, p) for (b, a), p in chunks], batch_size=2, chunk_len=C)
    runs = {}
    for beta in (0.0, 0.1):
        z = logits.clone().requires_grad_(True)
        loss, metrics = omniopd(z, ref_logits, tokens, mask, audit, beta=beta, normalizer=2)
        loss.backward()
        runs[beta] = (loss.item(), z.grad.clone(), metrics)
    z64 = logits.double().requires_grad_(True)
    reference = design_omniopd(z64, ref_logits.double(), tokens, mask, chunks, 0.0, 2)
    reference.backward()
    loss0, grad0, m0 = runs[0.0]
    assert loss0 == pytest.approx(reference.item(), rel=1e-6)  # the policy-gradient term alone
    torch.testing.assert_close(grad0.double(), z64.grad, rtol=1e-5, atol=1e-6)
    audited = [(b, a + j) for (b, a), _ in chunks for j in range(C)]
    expected_kl = _kl_unaudited(logits, ref_logits, mask, audited)
    m1 = runs[0.1][2]
    assert m0["kl/unaudited_mean"] == pytest.approx(expected_kl, rel=1e-5)  # measured, not NaN
    assert m1["kl/unaudited_mean"] == pytest.approx(expected_kl, rel=1e-5)
    assert m0["loss/kl"] == 0.0 and m1["loss/kl"] > 0
    for key in ("loss/pg", "loss/audited_tokens", "loss/kl_tokens"):  # nothing else moves
        assert m0[key] == pytest.approx(m1[key], rel=1e-6), key


def test_beta_zero_on_the_fused_head_path_measures_the_kl_against_float64():
    """The trainer's path: `Head(hidden, weight)` goes through linear_omniopd_loss_terms. At β = 0 the loss is
    the policy-gradient term alone and the KL to the reference is still measured, matching float64 math on the
    logits hidden @ weightᵀ."""
    g = torch.Generator().manual_seed(7)
    d = 16
    hidden, ref_hidden = torch.randn(B, T, d, generator=g), torch.randn(B, T, d, generator=g)
    weight, ref_weight = torch.randn(V, d, generator=g) * 0.5, torch.randn(V, d, generator=g) * 0.5
    _, _, tokens, mask = _inputs(3)
    chunks = [((0, 1), 0.6), ((1, 2), 0.3)]
    audit = AuditResult.given([(b, a, p) for (b, a), p in chunks], batch_size=2, chunk_len=C)
    h = hidden.clone().requires_grad_(True)
    loss, metrics = omniopd(Head(h, weight), Head(ref_hidden, ref_weight), tokens, mask, audit, beta=0.0,
                            normalizer=2)
    loss.backward()
    h64 = hidden.double().requires_grad_(True)
    logits64, ref64 = h64 @ weight.double().T, ref_hidden.double() @ ref_weight.double().T
    reference = design_omniopd(logits64, ref64, tokens, mask, chunks, 0.0, 2)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    audited = [(b, a + j) for (b, a), _ in chunks for j in range(C)]
    expected_kl = _kl_unaudited(logits64.detach(), ref64, mask, audited)
    assert expected_kl > 0
    assert metrics["kl/unaudited_mean"] == pytest.approx(expected_kl, rel=1e-5)  # measured, not NaN
    assert metrics["loss/kl"] == 0.0 and metrics["loss/pg"] == pytest.approx(reference.item(), rel=1e-5)


def test_alpha_zero_is_k_sem_over_n_exactly_and_moves_nothing_else():
    k_sem = torch.tensor([0.0, 1.3, 2.7, 3.0], dtype=torch.float64)
    pi_bar = torch.tensor([0.9, 0.1, 0.5, 0.0], dtype=torch.float64)
    assert torch.equal(acceptance_target(k_sem, pi_bar, 3, 0.0), k_sem / 3)
    # through score_forks: the same forks and texts with α = 0 and α = 1
    g = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(2, 6, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    anchors = torch.tensor([[0, 3], [2, -1]])
    forks = [Fork(0, 0, "", "the sum is"), Fork(0, 3, "", "12"), Fork(1, 2, "", "so 7")]
    texts = [["the sum is", "sum is", "a"], ["12", "13", "12 apples"], ["so 7", "so 8", "then 7"]]
    phi = get_similarity("ned")
    one = score_forks(anchors, forks, texts, old, phi, n=3, alpha=1.0, chunk_len=C)
    zero = score_forks(anchors, forks, texts, old, phi, n=3, alpha=0.0, chunk_len=C)
    for name in ("anchors", "kept", "k_sem", "pi_bar", "phi"):
        assert torch.equal(getattr(one, name), getattr(zero, name)), name
    assert torch.equal(zero.pi_hat[zero.kept], zero.k_sem[zero.kept] / 3)
    torch.testing.assert_close(one.pi_hat[one.kept], (one.k_sem[one.kept] + one.pi_bar[one.kept]) / 4)


def test_flags_load_and_beta_belongs_to_omniopd():
    cfg = load_config(["--objective.beta=0", "--audit.alpha=0", "--audit.selection=random"])
    assert (cfg.objective.beta, cfg.audit.alpha, cfg.audit.selection) == (0.0, 0.0, "random")
    assert cfg.objective.rl_beta == 0.05  # the rl baseline keeps its own anchor weight
    base = load_config([])
    for section in ("generation", "teacher", "optim", "train", "data", "model"):  # nothing else moved
        assert getattr(cfg, section) == getattr(base, section), section


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_fused_step import tiny_random_student

    return tiny_random_student(tmp_path_factory.mktemp("tiny"))


def _one_step(tiny, out, *extra):
    from test_fused_step import STEP

    from omniopd.trainer import Trainer

    cfg = load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={out}", *STEP,
                       "--generation.temperature=0", *extra])
    with Trainer(cfg) as trainer:
        return trainer.train_step()


def test_objective_beta_leaves_the_rl_baseline_alone(tiny, tmp_path):
    """Real rl steps (tiny random student, greedy rollouts): objective.beta does not touch them; rl_beta does."""
    base = _one_step(tiny, tmp_path / "a", "--objective.name=rl")
    other = _one_step(tiny, tmp_path / "b", "--objective.name=rl", "--objective.beta=0")
    own = _one_step(tiny, tmp_path / "c", "--objective.name=rl", "--objective.rl_beta=0")
    for key in ("loss/total", "loss/pg", "loss/kl"):
        assert other[key] == pytest.approx(base[key], rel=1e-6, abs=1e-12), key
    assert own["loss/kl"] == 0.0 and own["loss/pg"] == pytest.approx(base["loss/pg"], rel=1e-6)


def test_random_selection_in_a_real_step_audits_as_many_chunks_elsewhere(tiny, tmp_path):
    entropy = _one_step(tiny, tmp_path / "e")
    rand = _one_step(tiny, tmp_path / "r", "--audit.selection=random")
    placed = ("audit/chunks_audited", "audit/chunks_dropped", "audit/chunks_per_response_mean",
              "audit/chunks_placed_per_response_mean", "audit/responses_without_chunks_frac")
    for key in placed + ("rollout/entropy_mean", "loss/kl_tokens"):
        assert rand[key] == entropy[key], key
    assert rand["audit/chunks_audited"] > 0
    # the anchors moved off the entropy peaks: lower mean entropy at the anchor
    assert rand["audit/entropy_anchor_mean"] < entropy["audit/entropy_anchor_mean"]


def test_short_responses_get_the_chunks_that_fit_and_kl_everywhere_else():
    """M = 3, C = 2: a response of 6 tokens gets 3 chunks, one of 3 tokens gets 1, one of 1 token none (all KL);
    the step logs chunks per response and the share of responses with none."""
    from omniopd.audit import select_anchors
    from omniopd.losses import audit_weights

    lengths = torch.tensor([6, 3, 1])
    mask = torch.arange(6) < lengths[:, None]
    entropy = torch.arange(18, dtype=torch.float32).reshape(3, 6).flip(1)  # highest first: greedy from the left
    anchors = select_anchors(entropy, mask, 3, C)
    assert anchors.tolist() == [[0, 2, 4], [0, -1, -1], [-1, -1, -1]]
    forks = [Fork(0, 0, "", "ab"), Fork(0, 2, "", "cd"), Fork(0, 4, "", "ef"), Fork(1, 0, "", "gh")]
    texts = [["ab", "ab"], ["cd", "xx"], None, ["gh", "gh"]]  # the third fork's request failed: dropped
    old = torch.full((3, 6), -0.5, dtype=torch.float64)
    audit = score_forks(anchors, forks, texts, old, get_similarity("ned"), n=2, alpha=1.0, chunk_len=C)
    assert audit.metrics["audit/chunks_per_response_mean"] == pytest.approx((2 + 1 + 0) / 3)  # scored
    assert audit.metrics["audit/chunks_placed_per_response_mean"] == pytest.approx((3 + 1 + 0) / 3)
    assert audit.metrics["audit/responses_without_chunks_frac"] == pytest.approx(1 / 3)
    _, kl_mask = audit_weights(audit, mask)
    audited = torch.zeros(3, 6, dtype=torch.bool)
    audited[0, 0:4] = True  # the dropped chunk at 4 gets the KL back
    audited[1, 0:2] = True
    assert torch.equal(kl_mask, mask & ~audited)


def test_a_response_whose_chunks_all_failed_has_room_but_no_audited_chunk():
    """'Without chunks' means no room (nothing placed): a response whose one chunk the teacher did not answer
    counts as placed, not as without chunks, and lowers the audited count only."""
    anchors = torch.tensor([[0, 2], [0, -1], [-1, -1]])
    forks = [Fork(0, 0, "", "ab"), Fork(0, 2, "", "cd"), Fork(1, 0, "", "gh")]
    texts = [["ab", "ab"], ["cd", "cd"], None]  # response 1's only chunk: the request failed
    old = torch.full((3, 6), -0.5, dtype=torch.float64)
    metrics = score_forks(anchors, forks, texts, old, get_similarity("ned"), n=2, alpha=1.0, chunk_len=C).metrics
    assert metrics["audit/chunks_per_response_mean"] == pytest.approx((2 + 0 + 0) / 3)
    assert metrics["audit/chunks_placed_per_response_mean"] == pytest.approx((2 + 1 + 0) / 3)
    assert metrics["audit/responses_without_chunks_frac"] == pytest.approx(1 / 3)
    assert metrics["audit/chunks_dropped"] == 1
