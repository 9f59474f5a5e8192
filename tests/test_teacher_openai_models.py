"""OpenAI's own chat models as teachers: the request follows the model family, a parameter the API rejects is a
config error naming our key (not retried), and instruct mode for an API that cannot continue a partial answer.
The real `openai` SDK talks to a loopback server replaying hand-written replies (tests/fixtures/openai/, the
documented chat.completion and error shapes)."""

from __future__ import annotations

import pytest
from loopback import api_teachers
from replay import replaying

from omniopd.rollout.teachers import TeacherRequest
from omniopd.rollout.teachers.instruct import CLOSE, OPEN
from omniopd.rollout.teachers.openai_api import is_reasoning_model, request_options

KEY = "sk-proj-omniopd-test-models-77aa"
CHAT = [{"role": "user", "content": "What is 12 + 7?"}]
PREFIX = "12 + 7 = "
ANSWER = "19, so the answer is \\boxed{19}."


@pytest.fixture()
def replay():
    with replaying("openai") as server:
        yield server


@pytest.fixture()
def teacher_for(replay, monkeypatch):
    with api_teachers(monkeypatch, "OMNIOPD_TEST_OPENAI_MODELS_KEY", KEY, kind="openai", base_url=f"{replay.url}/v1",
                      completion_mode="instruct", max_retries=2, retry_backoff_s=0.01, timeout_s=10,
                      step_deadline_s=30) as make:
        yield make


def ask(teacher, n: int = 1, temperature: float = 0.7, prefix: str = PREFIX):
    [result] = teacher.generate([TeacherRequest(CHAT, prefix, n=n, max_tokens=16, temperature=temperature,
                                                key="seq 2 anchor 9")])
    return result


@pytest.mark.parametrize("model, reasoning", [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True),
                                              ("gpt-5", True), ("gpt-5-mini", True), ("openai/gpt-5-nano", True),
                                              ("gpt-5-chat-latest", False), ("gpt-4.1", False), ("gpt-4o-mini", False),
                                              ("smollm2-135m", False), ("omni-moderation", False)])
def test_model_families(model, reasoning):
    assert is_reasoning_model(model) is reasoning


def test_request_options_per_family():
    assert request_options("gpt-5-mini", official=True, n=2, max_tokens=16, temperature=0.7) == {
        "model": "gpt-5-mini", "n": 2, "max_completion_tokens": 16, "reasoning_effort": "minimal"}
    assert request_options("o3-mini", official=False, n=1, max_tokens=16, temperature=0.7)["reasoning_effort"] == "low"
    assert request_options("gpt-4.1", official=True, n=1, max_tokens=16, temperature=0.7) == {
        "model": "gpt-4.1", "n": 1, "max_completion_tokens": 16, "temperature": 0.7}
    # An OpenAI-compatible server (vLLM, SGLang, proxies) keeps the classic max_tokens.
    assert request_options("smollm2-135m", official=False, n=1, max_tokens=16, temperature=0.7) == {
        "model": "smollm2-135m", "n": 1, "max_tokens": 16, "temperature": 0.7}


def test_reasoning_model_request_and_normalised_instruct_replies(replay, teacher_for, caplog):
    replay.push("reasoning_two_choices")
    with caplog.at_level("WARNING", logger="omniopd.teacher"):
        teacher = teacher_for(model="gpt-5-mini", price_in_per_mtok=0.25, price_out_per_mtok=2.0)
    assert "fixed temperature 1" in caplog.text
    long_prefix = "Adding the two numbers gives "  # repeats of at least MIN_OVERLAP characters are dropped
    result = ask(teacher, n=2, prefix=long_prefix)
    [sent] = replay.requests
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["authorization"] == f"Bearer {KEY}"
    body = sent["body"]
    assert {k: body[k] for k in body if k != "messages"} == {
        "model": "gpt-5-mini", "n": 2, "max_completion_tokens": 16, "reasoning_effort": "minimal"}
    [turn] = body["messages"]  # no assistant turn: the partial answer is in the user turn
    assert turn["role"] == "user" and turn["content"].endswith(f"{OPEN}{long_prefix}{CLOSE}")
    # One reply in quotes, one repeating the prefix: both normalised to the continuation.
    assert result.texts == [ANSWER, ANSWER]
    assert (result.prompt_tokens, result.completion_tokens) == (52, 90)  # reasoning tokens are output
    assert teacher.usage()["cost_usd"] == pytest.approx((52 * 0.25 + 90 * 2.0) / 1e6)


@pytest.mark.parametrize("fixture_name, param, key", [
    ("error_unsupported_temperature", "temperature", "teacher.temperature"),
    ("error_unsupported_max_tokens", "max_tokens", "audit.chunk_len")])
def test_a_rejected_parameter_is_a_config_error_naming_the_key_not_retried(replay, teacher_for, fixture_name, param,
                                                                           key):
    replay.push(fixture_name, "chat_one_choice")
    result = ask(teacher_for(model="gpt-4.1-mini"))
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert f"config error: the API rejects parameter '{param}' (set by {key}" in result.error
    assert "seq 2 anchor 9" in result.error and "not retried" in result.error and KEY not in result.error


def test_reasoning_that_leaves_no_text_fails_at_once(replay, teacher_for):
    replay.push("reasoning_no_text", "reasoning_two_choices")
    result = ask(teacher_for(model="gpt-5-mini"))
    assert result.texts is None and len(replay.requests) == 1 and "audit.chunk_len" in result.error
    assert (result.prompt_tokens, result.completion_tokens) == (52, 16)  # billed all the same


def test_a_429_is_retried_after_retry_after_ms(replay, teacher_for):
    replay.push("error_rate_limit", "chat_one_choice")
    result = ask(teacher_for(model="gpt-4.1-mini"))
    assert result.texts == [ANSWER] and result.retries == 1
    assert replay.requests[1]["time"] - replay.requests[0]["time"] >= 0.28
    # A non-reasoning model on a compatible endpoint gets our temperature and max_tokens.
    assert replay.requests[1]["body"]["temperature"] == 0.7 and replay.requests[1]["body"]["max_tokens"] == 16


def _choices(*contents: str) -> dict:
    """The chat_one_choice fixture with one choice per content (hand-written, the documented shape)."""
    from replay import fixture

    reply = fixture("openai", "chat_one_choice")
    template = reply["body"]["choices"][0]
    reply["body"]["choices"] = [{**template, "index": i, "message": {**template["message"], "content": c}}
                                for i, c in enumerate(contents)]
    return reply


def test_a_reply_empty_after_normalising_is_a_failed_sample_asked_for_again(replay, teacher_for):
    """An instruct reply that only echoes the partial answer normalises to nothing: that sample failed (never ''),
    the call's good sample is kept and only the missing one is asked for again."""
    replay.queue += [_choices(f"{OPEN}{PREFIX}{CLOSE}", ANSWER), _choices(ANSWER)]
    result = ask(teacher_for(model="gpt-4.1-mini"), n=2)
    assert result.texts == [ANSWER, ANSWER] and result.retries == 1
    assert [r["body"]["n"] for r in replay.requests] == [2, 1]
    assert (result.prompt_tokens, result.completion_tokens) == (100, 24)  # both calls billed


def test_a_sample_that_keeps_normalising_to_nothing_fails_the_request(replay, teacher_for):
    replay.queue += [_choices(f"{OPEN}{PREFIX}{CLOSE}")] * 3
    result = ask(teacher_for(model="gpt-4.1-mini", max_retries=2))
    assert result.texts is None and "nothing left after normalising" in result.error
    assert "gave up after 2 retries" in result.error
