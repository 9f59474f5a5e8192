"""The parts of the overlapped / pipelined step (issue 13) on their own: the truncated importance ratio against
float64 arithmetic, the OmniOPD loss with it against docs/design.md §1 with ρ written out, the streaming teacher job,
and the config rules."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd.audit import AuditResult, Fork, get_similarity
from omniopd.config import ConfigError, load_config
from omniopd.losses import omniopd, truncated_ratio
from omniopd.pipeline import Background, StreamedScores
from omniopd.rollout.teachers.base import TeacherJob, TeacherResult

B, T, V, C = 2, 6, 37, 2


def test_truncated_ratio_hand_checked():
    logp = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]])
    old = torch.tensor([[math.log(0.25), math.log(0.3), math.log(0.4)]])
    mask = torch.tensor([[True, True, False]])
    ratio, stats = truncated_ratio(logp, old, mask, max_ratio=2.5)
    # 0.5/0.25 = 2, 0.9/0.3 = 3 -> truncated to 2.5, padding -> 0
    torch.testing.assert_close(ratio, torch.tensor([[2.0, 2.5, 0.0]]))
    assert stats["pipeline/ratio_mean"] == pytest.approx(2.5)
    assert stats["pipeline/ratio_max"] == pytest.approx(3.0) and stats["pipeline/ratio_min"] == pytest.approx(2.0)
    assert stats["pipeline/ratio_truncated_frac"] == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 0), st.floats(-20, 0), st.booleans()), min_size=1, max_size=12),
       st.floats(0.1, 10))
def test_truncated_ratio_matches_float64(rows, cap):
    logp = torch.tensor([[r[0] for r in rows]])
    old = torch.tensor([[r[1] for r in rows]])
    mask = torch.tensor([[r[2] for r in rows]])
    ratio, stats = truncated_ratio(logp, old, mask, max_ratio=cap)
    for j, (_, _, keep) in enumerate(rows):
        expected = min(math.exp(float(logp[0, j]) - float(old[0, j])), cap) if keep else 0.0
        assert float(ratio[0, j]) == pytest.approx(expected, rel=1e-6, abs=1e-30)
    assert torch.isfinite(ratio).all()
    if not mask.any():
        assert math.isnan(stats["pipeline/ratio_mean"])


def test_truncated_ratio_rejects_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="rollout_logprob must have shape"):
        truncated_ratio(x, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), max_ratio=2.0)
    with pytest.raises(ValueError, match="max_ratio"):
        truncated_ratio(x, x, torch.ones(2, 3, dtype=torch.bool), max_ratio=float("nan"))


def test_omniopd_with_ratio_matches_float64_formula():
    """−ρ·π̂·log π_θ(y) on audited tokens (ρ detached), β·KL on the rest: value and gradient."""
    g = torch.Generator().manual_seed(3)
    logits, ref_logits = torch.randn(B, T, V, generator=g) * 3, torch.randn(B, T, V, generator=g) * 3
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    ratio = torch.rand(B, T, generator=g) * 2
    chunks = [((0, 1), 0.3), ((0, 4), 0.9), ((1, 2), 0.55)]
    audit = AuditResult.given([(b, a, w) for (b, a), w in chunks], batch_size=B, chunk_len=C)
    beta, norm = 0.2, 2.0
    z = logits.clone().requires_grad_(True)
    loss, _ = omniopd(z, ref_logits, tokens, mask, audit, beta=beta, normalizer=norm, ratio=ratio)
    loss.backward()

    z64 = logits.double().requires_grad_(True)
    logp, logq = torch.log_softmax(z64, -1), torch.log_softmax(ref_logits.double(), -1)
    total, audited = 0.0, set()
    for (b, a), w in chunks:
        for t in range(a, a + C):
            total = total - float(ratio[b, t]) * w * logp[b, t, tokens[b, t]]
            audited.add((b, t))
    for b in range(B):
        for t in range(T):
            if mask[b, t] and (b, t) not in audited:
                total = total + beta * (logq[b, t].exp() * (logq[b, t] - logp[b, t])).sum()
    (total / norm).backward()
    assert loss.item() == pytest.approx((total / norm).item(), rel=1e-6)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)
    # ρ = 1 is the plain loss.
    plain, _ = omniopd(logits, ref_logits, tokens, mask, audit, beta=beta, normalizer=norm)
    ones, _ = omniopd(logits, ref_logits, tokens, mask, audit, beta=beta, normalizer=norm,
                      ratio=torch.ones(B, T))
    assert ones.item() == plain.item()
    with pytest.raises(ValueError, match="ratio must have shape"):
        omniopd(logits, ref_logits, tokens, mask, audit, beta=beta, normalizer=norm, ratio=torch.ones(B, T + 1))


def test_teacher_job_streams_each_index_once_in_arrival_order():
    job = TeacherJob(3)
    results = [TeacherResult([f"t{i}"], None) for i in range(3)]

    def backend() -> None:
        for i in (2, 0):
            time.sleep(0.05)
            job._put(i, results[i])
        # index 1 never streamed (a deadline): it still comes out, from the final list
        job._finish([results[0], TeacherResult(None, "deadline"), results[2]])

    threading.Thread(target=backend).start()
    seen = list(job.as_completed())
    assert [i for i, _ in seen] == [2, 0, 1]
    assert seen[2][1].error == "deadline"
    assert job.done() and job.results()[0] is results[0] and job.seconds >= 0.1


def test_teacher_job_hands_the_backend_error_to_the_waiter():
    job = TeacherJob(1)
    job._finish(None, RuntimeError("teacher is closed"))
    with pytest.raises(RuntimeError, match="teacher is closed"):
        job.results()
    with pytest.raises(RuntimeError, match="teacher is closed"):
        list(job.as_completed())


def test_background_returns_value_and_reraises_in_the_joiner():
    assert Background(lambda: 41 + 1, "ok").join() == 42

    def fail() -> None:
        raise OSError("engine gone")

    with pytest.raises(OSError, match="engine gone"):
        Background(fail, "bad").join()


def test_config_rules():
    assert load_config([]).train.pipeline == 0 and load_config([]).train.overlap is False  # default: synchronous
    assert load_config(["--train.pipeline=1"]).train.pipeline == 1
    with pytest.raises(ConfigError, match="train.pipeline=2"):
        load_config(["--train.pipeline=2"])
    with pytest.raises(ConfigError, match="objective.name=omniopd only"):
        load_config(["--train.overlap=true", "--objective.name=rl"])
    with pytest.raises(ConfigError, match="train.max_ratio"):
        load_config(["--train.max_ratio=0"])


def test_streamed_scores_equal_the_batched_similarity():
    """φ scored fork by fork as answers arrive == the one batched call score_forks would make; a failed fork is
    skipped; a different request falls back to scoring it all."""
    phi = get_similarity("ned")
    forks = [Fork(0, 0, "", "the sum is 113"), Fork(0, 8, "", "so we carry"), Fork(1, 0, "", "27 + 86")]
    texts = [["the sum is 113", "the sum is 112"], None, ["27 plus 86", "27 + 86 ="]]
    job = TeacherJob(3)
    for i in (2, 1, 0):
        job._put(i, TeacherResult(texts[i], None if texts[i] else "HTTP 500"))
    job._finish([TeacherResult(t, None if t else "HTTP 500") for t in texts])
    scores = StreamedScores(phi, forks, n=2)
    results = scores.collect(job)
    assert [r.ok for r in results] == [True, False, True] and sorted(scores.phi) == [0, 2]
    kept_chunks, kept_texts = [forks[0].chunk_text, forks[2].chunk_text], [texts[0], texts[2]]
    torch.testing.assert_close(scores(kept_chunks, kept_texts), phi(kept_chunks, kept_texts))
    torch.testing.assert_close(scores([forks[1].chunk_text], [["so we", "we carry"]]),
                               phi([forks[1].chunk_text], [["so we", "we carry"]]))
