"""Fork selection, teacher prefixes, the Dirichlet target and the hand-computed 2-sequence step."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniopd.audit import (
    Fork,
    acceptance_target,
    build_forks,
    get_similarity,
    num_chunks_at,
    score_forks,
    select_anchors,
)
from omniopd.config import AuditConfig
from omniopd.losses import audit_weights, omniopd


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from omniopd.assets import student_path

    return AutoTokenizer.from_pretrained(student_path("smollm2-135m"))


def test_num_chunks_schedule():
    assert [num_chunks_at(s, AuditConfig(num_chunks=3)) for s in (0, 7, 1000)] == [3, 3, 3]
    up = AuditConfig(num_chunks=5, schedule="linear", schedule_start=1, schedule_steps=4)
    assert [num_chunks_at(s, up) for s in range(7)] == [1, 2, 3, 4, 5, 5, 5]
    # 1 + 3·s/5 floored: 1, 1.6, 2.2, 2.8, 3.4, 4
    odd = AuditConfig(num_chunks=4, schedule="linear", schedule_start=1, schedule_steps=5)
    assert [num_chunks_at(s, odd) for s in range(6)] == [1, 1, 2, 2, 3, 4]
    down = AuditConfig(num_chunks=1, schedule="linear", schedule_start=4, schedule_steps=3)
    assert [num_chunks_at(s, down) for s in range(5)] == [4, 3, 2, 1, 1]
    with pytest.raises(ValueError, match="step"):
        num_chunks_at(-1, up)


# Hand-made step: C = 2, M = 2, N = 2, alpha = 2, beta = 0.1, phi = ned.
# seq 0 response "1234567890" (10 digit tokens); seq 1 "9876543" (7 tokens) + 3 padding columns.
ENTROPY = [[0.1, 0.5, 0.9, 0.2, 0.3, 0.8, 0.1, 0.95, 0.4, 0.7],
           # 6 is the peak but its chunk runs into padding; 1 and 2 tie (lower wins, 2 then overlaps);
           # padding holds the largest values and must never be chosen.
           [0.2, 0.6, 0.6, 0.3, 0.1, 0.2, 0.9, 5.0, 5.0, 5.0]]


def _batch(tokenizer):
    ids = [tokenizer.encode("1234567890", add_special_tokens=False),
           tokenizer.encode("9876543", add_special_tokens=False)]
    assert [len(r) for r in ids] == [10, 7]  # SmolLM2 writes one token per digit
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :10] = mask[1, :7] = True
    tokens = torch.full((2, 10), -100)
    tokens[0, :10], tokens[1, :7] = torch.tensor(ids[0]), torch.tensor(ids[1])
    return ids, tokens, mask


def test_select_anchors_hand_case():
    entropy = torch.tensor(ENTROPY)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0], mask[1, :7] = True, True
    assert select_anchors(entropy, mask, 2, 2).tolist() == [[2, 7], [1, 3]]
    assert select_anchors(entropy, mask, 2, 2, min_entropy=0.5).tolist() == [[2, 7], [1, -1]]
    assert select_anchors(entropy, mask, 4, 3).tolist() == [[2, 7, -1, -1], [1, 4, -1, -1]]
    assert select_anchors(entropy, mask, 0, 2).shape == (2, 0)
    with pytest.raises(ValueError, match="response_mask"):
        select_anchors(entropy, mask[:, :5], 2, 2)


def test_hand_computed_two_sequence_step(tokenizer):
    ids, tokens, mask = _batch(tokenizer)
    entropy = torch.tensor(ENTROPY, dtype=torch.float64)
    anchors = select_anchors(entropy, mask, num_chunks=2, chunk_len=2)
    assert anchors.tolist() == [[2, 7], [1, 3]]

    forks = build_forks(ids, anchors, tokenizer, chunk_len=2)
    assert forks == [Fork(0, 2, "12", "34"), Fork(0, 7, "1234567", "89"),
                     Fork(1, 1, "9", "87"), Fork(1, 3, "987", "65")]

    teacher = [["34", "35"],          # ned 1, 1/2 -> k_sem 1.5
               ["89 and more", "x"],  # trimmed to "89": 1; "x": 0 -> 1.0
               ["87"],                # N - 1 texts: dropped, counted, not scored
               ["56", "65"]]          # two substitutions: 0; 1 -> 1.0
    old_lp = torch.zeros(2, 10, dtype=torch.float64)
    old_lp[0, 2:4] = math.log(0.5)                                      # pi_bar 0.5
    old_lp[0, 7], old_lp[0, 8] = math.log(0.2), math.log(0.8)            # pi_bar sqrt(0.16) = 0.4
    old_lp[1, 3], old_lp[1, 4] = math.log(0.9), math.log(0.4)            # pi_bar sqrt(0.36) = 0.6
    old_lp[1, 1:3] = -50.0  # the dropped chunk: would drag every statistic if it were scored
    audit = score_forks(anchors, forks, teacher, old_lp, get_similarity("ned"), n=2, alpha=2.0, chunk_len=2,
                        entropy=entropy, response_mask=mask)
    # [B, M] tensors, slot by slot: (0, 2) (0, 7) | (1, 1) dropped, (1, 3)
    assert audit.kept.tolist() == [[True, True], [False, True]] and audit.anchors.tolist() == [[2, 7], [1, 3]]
    assert audit.kept_chunks() == [(0, 2), (0, 7), (1, 3)]
    torch.testing.assert_close(audit.phi, torch.tensor([[1, 0.5], [1, 0], [0, 1]], dtype=torch.float64))
    torch.testing.assert_close(audit.pi_bar[audit.kept], torch.tensor([0.5, 0.4, 0.6], dtype=torch.float64))
    expected_pi_hat = [(1.5 + 2 * 0.5) / 4, (1 + 2 * 0.4) / 4, (1 + 2 * 0.6) / 4]  # 0.625, 0.45, 0.55
    torch.testing.assert_close(audit.pi_hat, torch.tensor([expected_pi_hat[:2], [0, expected_pi_hat[2]]],
                                                          dtype=torch.float64), rtol=0, atol=1e-12)
    m = audit.metrics
    assert m["audit/chunks_audited"] == 3 and m["audit/chunks_dropped"] == 1
    assert m["audit/k_sem_mean"] == pytest.approx((1.5 + 1 + 1) / 3)
    assert m["audit/pi_hat_mean"] == pytest.approx(sum(expected_pi_hat) / 3)
    assert m["audit/entropy_anchor_mean"] == pytest.approx((0.9 + 0.95 + 0.6 + 0.3) / 4)
    assert m["audit/entropy_overall_mean"] == pytest.approx((sum(ENTROPY[0]) + sum(ENTROPY[1][:7])) / 17)

    weights, kl_mask = audit_weights(audit, mask)
    expected_w = torch.zeros(2, 10)
    expected_w[0, 2:4], expected_w[0, 7:9], expected_w[1, 3:5] = 0.625, 0.45, 0.55
    torch.testing.assert_close(weights, expected_w, rtol=0, atol=1e-7)
    expected_kl = mask.clone()
    expected_kl[0, [2, 3, 7, 8]] = False
    expected_kl[1, [3, 4]] = False  # the dropped chunk's tokens (1, 2) keep the KL anchor
    assert torch.equal(kl_mask, expected_kl)

    # Loss on a 42-word vocabulary covering the digit ids (32..41): the student puts logit log 2 on the
    # sampled token (p = 2/43, others 1/43), the reference is uniform (q = 1/42).
    v, beta = 42, 0.1
    logits = torch.zeros(2, 10, v, dtype=torch.float64)
    logits[0, torch.arange(10), tokens[0]] = math.log(2)
    logits[1, torch.arange(7), tokens[1, :7]] = math.log(2)
    logits.requires_grad_(True)
    ref_logits = torch.zeros(2, 10, v, dtype=torch.float64)
    kl_uniform_to_student = (1 / 42) * math.log(43 / 84) + (41 / 42) * math.log(43 / 42)
    audited_weight = 2 * 0.625 + 2 * 0.45 + 2 * 0.55
    expected = (audited_weight * math.log(43 / 2) + beta * 11 * kl_uniform_to_student) / 2
    loss, metrics = omniopd(logits, ref_logits, tokens, mask, audit, beta=beta, normalizer=2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/pg"] == pytest.approx(audited_weight * math.log(43 / 2) / 2, abs=1e-6)
    assert metrics["kl/unaudited_mean"] == pytest.approx(kl_uniform_to_student, abs=1e-6)
    loss.backward()  # the step still trains on the kept chunks
    assert logits.grad[0, 2].abs().sum() > 0 and logits.grad[1, 3].abs().sum() > 0

    # Centred target: weight π̂ − π̄ per chunk (0.625 − 0.5, 0.45 − 0.4, 0.55 − 0.6): the third chunk, which
    # the teacher backs less than the student believes, gets a negative weight and is pushed down.
    centred_w, centred_kl = audit_weights(audit, mask, target="centred")
    expected_w[0, 2:4], expected_w[0, 7:9], expected_w[1, 3:5] = 0.125, 0.05, -0.05
    torch.testing.assert_close(centred_w, expected_w, rtol=0, atol=1e-7)
    assert torch.equal(centred_kl, expected_kl)
    logits.grad = None
    centred_weight = 2 * 0.125 + 2 * 0.05 - 2 * 0.05
    loss, _ = omniopd(logits, ref_logits, tokens, mask, audit, beta=beta, normalizer=2, target="centred")
    assert loss.item() == pytest.approx((centred_weight * math.log(43 / 2) + beta * 11 * kl_uniform_to_student) / 2,
                                        abs=1e-6)
    loss.backward()
    # pushed down: descending the loss lowers the sampled token's logit in the negative-weight chunk
    assert logits.grad[1, 3, tokens[1, 3]] > 0 and logits.grad[0, 2, tokens[0, 2]] < 0
    with pytest.raises(ValueError, match="target='centered'"):
        audit_weights(audit, mask, target="centered")


def test_failed_requests_are_dropped_not_scored():
    forks = [Fork(0, 0, "", "ab"), Fork(0, 2, "ab", "cd"), Fork(1, 0, "", "ef")]
    old_lp = torch.full((2, 4), math.log(0.5))
    teacher = [None, ["cd", None, "cd"], ["ef", "ef", "ef"]]  # failed request; one failed sample
    anchors = torch.tensor([[0, 2], [0, -1]])
    audit = score_forks(anchors, forks, teacher, old_lp, get_similarity("ned"), n=3, alpha=1.0, chunk_len=2)
    assert audit.kept_chunks() == [(1, 0)]
    assert audit.metrics["audit/chunks_dropped"] == 2
    assert audit.pi_hat[audit.kept].tolist() == pytest.approx([(3 + 0.5) / 4])
    with pytest.raises(ValueError, match="more than N=3"):
        score_forks(anchors[:1, :1], forks[:1], [["a"] * 4], old_lp[:1], get_similarity("ned"), n=3, alpha=1.0,
                    chunk_len=2)
    with pytest.raises(ValueError, match="do not match the anchors"):
        score_forks(anchors, forks[:2], [None] * 2, old_lp, get_similarity("ned"), n=3, alpha=1.0, chunk_len=2)
    nothing = score_forks(anchors, forks, [None] * 3, old_lp, get_similarity("ned"), n=3, alpha=1.0, chunk_len=2)
    assert not nothing.kept.any() and nothing.metrics["audit/chunks_dropped"] == 3


def test_build_forks_decodes_whole_prefixes(tokenizer):
    ids = tokenizer.encode("héllo wörld 😀 ok", add_special_tokens=False)
    # the emoji is two byte-level tokens (6, 7); anchor 7 splits it
    assert tokenizer.decode(ids[:7]).endswith("\ufffd")
    forks = build_forks([ids], torch.tensor([[7, 3]]), tokenizer, chunk_len=2)
    # ascending anchor order even when given out of order
    assert forks[0] == Fork(0, 3, "héllo", " wör")  # the chunk keeps its leading space
    assert forks[1] == Fork(0, 7, "héllo wörld ", "😀 ok")  # half character moves into the chunk
    assert forks[1].prefix_text + forks[1].chunk_text == tokenizer.decode(ids)
    with pytest.raises(ValueError, match="sequence 0: chunk at anchor 8"):
        build_forks([ids], torch.tensor([[8]]), tokenizer, chunk_len=2)


def test_acceptance_target_range_and_detach():
    k = torch.tensor([0.0, 1.5, 4.0], requires_grad=True)
    pi_bar = torch.tensor([1.0, 0.25, 0.0], requires_grad=True)
    pi_hat = acceptance_target(k, pi_bar, 4, 1.0)
    assert not pi_hat.requires_grad and pi_hat.grad_fn is None
    assert pi_hat.tolist() == pytest.approx([0.2, 1.75 / 5, 0.8])
    assert acceptance_target(k, pi_bar, 4, 0.0).tolist() == pytest.approx([0.0, 0.375, 1.0])
    with pytest.raises(ValueError, match="k_sem must lie in \\[0, 4\\]: element 0"):
        acceptance_target(torch.tensor([4.5]), torch.tensor([0.5]), 4, 1.0)
    with pytest.raises(ValueError, match="pi_bar"):
        acceptance_target(torch.tensor([1.0]), torch.tensor([float("nan")]), 4, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        acceptance_target(k, pi_bar, 4, -1.0)
    with pytest.raises(ValueError, match="n "):
        acceptance_target(k, pi_bar, 0, 1.0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=4,
                    max_size=40), data=st.data())
def test_build_forks_prefix_is_the_decoded_response_before_the_anchor(tokenizer, text, data):
    ids = tokenizer.encode(text, add_special_tokens=False)
    c = data.draw(st.integers(1, 3))
    if len(ids) < c:
        return
    anchor = data.draw(st.integers(0, len(ids) - c))
    (fork,) = build_forks([ids], torch.tensor([[anchor]]), tokenizer, chunk_len=c)
    head, full = tokenizer.decode(ids[:anchor]), tokenizer.decode(ids[:anchor + c])
    assert fork.prefix_text + fork.chunk_text == full
    if "\ufffd" not in head:  # clean boundary: exactly the response text before the chunk
        assert fork.prefix_text == head
    else:  # a split character: only its replacement marks leave the prefix
        assert head.startswith(fork.prefix_text) and head[len(fork.prefix_text):].strip("\ufffd") == ""
        assert not fork.prefix_text.endswith("\ufffd")


def test_nan_log_probs_name_the_fork():
    old_lp = torch.zeros(1, 4)
    old_lp[0, 3] = float("nan")
    forks = [Fork(0, 0, "", "ab"), Fork(0, 2, "ab", "cd")]
    with pytest.raises(ValueError, match="fork \\(sequence 0, anchor 2\\): pi_bar must lie in"):
        score_forks(torch.tensor([[0, 2]]), forks, [["ab"], ["cd"]], old_lp, get_similarity("ned"), n=1, alpha=1.0,
                    chunk_len=2)
