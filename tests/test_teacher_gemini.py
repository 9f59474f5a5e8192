"""Gemini teacher: the real `google-genai` SDK against a loopback server replaying canned replies
(tests/fixtures/gemini/, hand-written in the documented generateContent REST shapes, not recorded: candidates with
parts, finishReason, usageMetadata, promptFeedback; errors as {"error": {"code", "message", "status", "details"}}).
"""

from __future__ import annotations

import pytest
from loopback import api_teachers
from replay import replaying

from omniopd.rollout.teachers import TeacherRequest
from omniopd.rollout.teachers.instruct import CLOSE, OPEN

KEY = "AIzaSy-omniopd-test-gemini-4f1c"
CHAT = [{"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 12 + 7?"}]
PREFIX = "12 + 7 = "
ANSWER = "19, so the answer is \\boxed{19}."
LONG_PREFIX = "Adding the two numbers gives "  # a repeat this long (>= MIN_OVERLAP) is dropped


@pytest.fixture()
def replay():
    with replaying("gemini") as server:
        yield server


@pytest.fixture()
def teacher_for(replay, monkeypatch):
    with api_teachers(monkeypatch, "OMNIOPD_TEST_GEMINI_KEY", KEY, kind="gemini", model="gemini-2.5-flash",
                      base_url=replay.url, max_retries=2, retry_backoff_s=0.01, timeout_s=10,
                      step_deadline_s=30) as make:
        yield make


def thinking_budget(thinking_config: dict) -> int:
    """The budget sent: SDK versions spell the field thinkingBudget or thinking_budget (proto JSON takes both)."""
    [(name, value)] = thinking_config.items()
    assert name in ("thinkingBudget", "thinking_budget")
    return value


def ask(teacher, n: int = 1, prefix: str = PREFIX, **fields) -> object:
    [result] = teacher.generate([TeacherRequest(CHAT, prefix, n=n, max_tokens=32, temperature=0.7, seed=3,
                                                key="seq 0 anchor 5", **fields)])
    return result


def test_instruct_request_shape_and_normalised_candidates(replay, teacher_for):
    replay.push("two_candidates")
    teacher = teacher_for(price_in_per_mtok=0.3, price_out_per_mtok=2.5)
    result = ask(teacher, n=2, prefix=LONG_PREFIX)
    [sent] = replay.requests
    assert sent["path"].endswith("/models/gemini-2.5-flash:generateContent")  # v1beta or v1 by SDK version
    assert sent["headers"]["x-goog-api-key"] == KEY
    body = sent["body"]
    assert body["systemInstruction"]["parts"] == [{"text": "You are a careful math tutor."}]
    [turn] = body["contents"]  # no model turn: the partial answer is in the user turn, with the instruction
    assert turn["role"] == "user" and turn["parts"][0]["text"].startswith("What is 12 + 7?\n\n")
    assert turn["parts"][0]["text"].endswith(f"{OPEN}{LONG_PREFIX}{CLOSE}")
    config = dict(body["generationConfig"])
    assert thinking_budget(config.pop("thinkingConfig")) == 0
    assert config == {"candidateCount": 2, "maxOutputTokens": 32, "temperature": 0.7}
    # The repeated prefix and the code fence are stripped: both candidates are the continuation.
    assert result.error is None and result.texts == [ANSWER, ANSWER]
    assert (result.prompt_tokens, result.completion_tokens) == (41, 24)
    assert teacher.usage()["cost_usd"] == pytest.approx((41 * 0.3 + 24 * 2.5) / 1e6)


def test_chat_mode_prefills_a_final_model_turn(replay, teacher_for):
    replay.push("thought_and_answer")
    result = ask(teacher_for(completion_mode="chat"))
    contents = replay.requests[0]["body"]["contents"]
    assert contents == [{"role": "user", "parts": [{"text": "What is 12 + 7?"}]},
                        {"role": "model", "parts": [{"text": PREFIX}]}]
    assert result.texts == ["19."]  # the thought part is not the continuation


def test_n_is_split_over_calls_where_candidates_are_capped(replay, teacher_for):
    replay.push(*["thought_and_answer"] * 3)
    result = ask(teacher_for(candidates_per_call=1, max_concurrency=1), n=3)
    assert [r["body"]["generationConfig"]["candidateCount"] for r in replay.requests] == [1, 1, 1]
    assert result.texts == ["19."] * 3
    # Each call bills its prompt; thinking tokens are billed as output.
    assert (result.prompt_tokens, result.completion_tokens) == (3 * 41, 3 * (3 + 30))


def test_thinking_budget_is_sent_and_allowed_for_in_the_output_limit(replay, teacher_for):
    replay.push("thought_and_answer")
    ask(teacher_for(thinking_budget=256))
    config = replay.requests[0]["body"]["generationConfig"]
    assert thinking_budget(config["thinkingConfig"]) == 256 and config["maxOutputTokens"] == 32 + 256


@pytest.mark.parametrize("bad", ["safety_block", "recitation", "thinking_only", "empty_candidate", "no_candidates",
                                 "error_503"])
def test_failed_samples_are_retried_never_empty_strings(replay, teacher_for, bad):
    replay.push(bad, "thought_and_answer")
    result = ask(teacher_for(max_concurrency=1))
    assert result.texts == ["19."] and result.retries == 1 and len(replay.requests) == 2
    # The failed call's tokens are billed all the same.
    billed = fixture_usage(bad)
    assert result.prompt_tokens == 41 + billed[0] and result.completion_tokens == 33 + billed[1]


def fixture_usage(name: str) -> tuple[int, int]:
    from replay import fixture

    usage = fixture("gemini", name)["body"].get("usageMetadata", {}) if fixture("gemini", name)["status"] == 200 \
        else {}
    return usage.get("promptTokenCount", 0), usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)


@pytest.mark.parametrize("bad, says", [("safety_block", "SAFETY"), ("recitation", "RECITATION"),
                                       ("thinking_only", "thinking-only"), ("empty_candidate", "empty candidate")])
def test_a_sample_that_keeps_failing_fails_the_request(replay, teacher_for, bad, says):
    replay.push(bad, bad, bad)
    result = ask(teacher_for(max_retries=2))
    assert result.texts is None and says in result.error and "gave up after 2 retries" in result.error


@pytest.mark.parametrize("bad, says", [
    ("prompt_blocked", "prompt was blocked (SAFETY)"),
    ("thinking_only_max_tokens", "teacher.thinking_budget"),
    ("error_thinking_budget", "config error: the API rejects a parameter set by teacher.thinking_budget"),
    ("error_api_key", "API key not valid")])
def test_what_a_retry_cannot_fix_fails_at_once(replay, teacher_for, bad, says):
    replay.push(bad, "thought_and_answer")
    result = ask(teacher_for())
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert says in result.error and "not retried" in result.error and KEY not in result.error


def test_a_429_waits_for_the_retry_info_delay(replay, teacher_for):
    replay.push("error_429", "thought_and_answer")
    teacher = teacher_for()
    result = ask(teacher)
    assert result.texts == ["19."] and result.retries == 1
    assert replay.requests[1]["time"] - replay.requests[0]["time"] >= 0.95  # "retryDelay": "1s"
    assert teacher.usage()["rate_limit_pauses"] == 1


def test_instruct_and_prefill_replies_are_cached_apart(replay, teacher_for, tmp_path):
    cache = str(tmp_path / "cache.sqlite")
    replay.push("thought_and_answer", "two_candidates")
    first = ask(teacher_for(cache_path=cache, completion_mode="chat"))
    again = ask(teacher_for(cache_path=cache, completion_mode="chat"))
    other = ask(teacher_for(cache_path=cache, completion_mode="instruct"), n=2)
    assert again.cached and again.texts == first.texts and not other.cached and len(replay.requests) == 2


def test_one_blocked_candidate_keeps_the_others_and_asks_only_for_the_missing_one(replay, teacher_for):
    replay.push("safety_and_answer", "thought_and_answer")
    result = ask(teacher_for(max_concurrency=1), n=2)
    assert result.texts == ["19.", "19."] and result.retries == 1
    assert [r["body"]["generationConfig"]["candidateCount"] for r in replay.requests] == [2, 1]
    assert (result.prompt_tokens, result.completion_tokens) == (41 + 41, 3 + 33)  # both calls billed


def test_a_language_finish_is_not_retried(replay, teacher_for):
    replay.push("language", "thought_and_answer")
    result = ask(teacher_for())
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert "LANGUAGE" in result.error and "not retried" in result.error


@pytest.mark.parametrize("bad, key", [("error_field_violation", "teacher.temperature"),
                                      ("error_turns_alternate", "teacher.completion_mode")])
def test_a_400_blames_the_field_it_names_or_the_completion_mode(replay, teacher_for, bad, key):
    """The details' fieldViolations win over words in the message (both messages mention 'model')."""
    replay.push(bad, "thought_and_answer")
    result = ask(teacher_for(completion_mode="chat"))
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert f"config error: the API rejects a parameter set by {key}:" in result.error


def test_the_thinking_budget_keys_the_cache(replay, teacher_for, tmp_path):
    cache = str(tmp_path / "cache.sqlite")
    replay.push("thought_and_answer", "thought_and_answer")
    ask(teacher_for(cache_path=cache))
    again = ask(teacher_for(cache_path=cache))
    thinking = ask(teacher_for(cache_path=cache, thinking_budget=256))
    assert again.cached and not thinking.cached and len(replay.requests) == 2


def test_the_rate_budget_charges_the_thinking_budget_up_front(teacher_for):
    req = TeacherRequest(CHAT, PREFIX, n=2, max_tokens=32, temperature=0.7)
    plain, thinking = teacher_for(), teacher_for(thinking_budget=256)
    assert plain.estimate_split(req, 2)[1] == 2 * 32
    assert thinking.estimate_split(req, 2) == (plain.estimate_split(req, 2)[0], 2 * (32 + 256))
