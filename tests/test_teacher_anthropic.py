"""Anthropic teacher: the real `anthropic` SDK against a loopback server replaying canned replies.

The fixtures in tests/fixtures/anthropic/ are hand-written in the documented Messages API shapes (a message with
text blocks, usage and stop_reason; errors as {"type": "error", "error": {"type", "message"}}).
The server records every request, so the test checks what the teacher sends, not only what it parses.
"""

from __future__ import annotations

import pytest
from loopback import api_teachers
from replay import fixture, replaying

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers import MissingKeyError, TeacherRequest, build_teacher

KEY = "sk-ant-api03-omniopd-test-0c3f9d1e7a"
CHAT = [{"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture()
def replay():
    with replaying("anthropic") as server:
        yield server


@pytest.fixture()
def teacher_for(replay, monkeypatch):
    with api_teachers(monkeypatch, "OMNIOPD_TEST_ANTHROPIC_KEY", KEY, kind="anthropic", model="claude-sonnet-4-5",
                      base_url=replay.url, max_retries=2, retry_backoff_s=0.01, timeout_s=10,
                      step_deadline_s=30) as make:
        yield make


def test_prefill_request_and_parsed_continuations(replay, teacher_for):
    replay.push("message_prefill", "message_prefill")
    teacher = teacher_for(price_in_per_mtok=3.0, price_out_per_mtok=15.0)
    [result] = teacher.generate([TeacherRequest(CHAT, "12 + 7 = ", n=2, max_tokens=32, temperature=0.7,
                                                seed=5, key="seq 0 anchor 3")])
    # n=2 on an API without `n`: two requests, each the documented prefill shape.
    assert len(replay.requests) == 2
    for sent in replay.requests:
        assert sent["path"] == "/v1/messages"
        # SDK 1.x sends `x-api-key`, 2.x `Authorization: Bearer`: either way the key from the env.
        assert KEY in (sent["headers"].get("x-api-key"), sent["headers"].get("authorization", "")[7:])
        assert sent["headers"]["anthropic-version"]
        assert sent["body"] == {
            "model": "claude-sonnet-4-5", "max_tokens": 32, "temperature": 0.7,
            "system": "You are a careful math tutor.",
            # The API rejects trailing whitespace in a prefill: it is held back...
            "messages": [{"role": "user", "content": "What is 12 + 7?"},
                         {"role": "assistant", "content": "12 + 7 ="}]}
    # ...and dropped from the front of the reply, so the text starts right after "12 + 7 = ".
    assert result.error is None and result.texts == ["19, so the answer is \\boxed{19}."] * 2
    assert (result.prompt_tokens, result.completion_tokens, result.retries) == (62, 28, 0)
    usage = teacher.usage()
    assert usage["last"]["cost_usd"] == usage["cost_usd"] == pytest.approx((62 * 3.0 + 28 * 15.0) / 1e6)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 62, 28)


def test_no_prefix_sends_no_assistant_turn_and_joins_text_blocks(replay, teacher_for):
    replay.push("message_two_blocks")
    [result] = teacher_for().generate([TeacherRequest(CHAT[1:], "", n=1, max_tokens=16, temperature=0.0)])
    body = replay.requests[0]["body"]
    assert body["messages"] == [{"role": "user", "content": "What is 12 + 7?"}] and "system" not in body
    assert result.texts == ["First, add the tens: 10 + 0 = 10."]


def test_overloaded_malformed_and_rate_limited_replies_are_retried(replay, teacher_for):
    replay.push("error_overloaded", "message_malformed", "error_rate_limit", "message_prefill")
    [result] = teacher_for(max_concurrency=1, max_retries=3).generate(
        [TeacherRequest(CHAT, "12 + 7 = ", n=1, max_tokens=32, temperature=0.7)])
    assert result.texts == ["19, so the answer is \\boxed{19}."] and result.retries == 3
    # The 429's retry-after (1 s) was honoured before the last call.
    assert replay.requests[3]["time"] - replay.requests[2]["time"] >= 0.95


@pytest.mark.parametrize("name, message", [("error_invalid_request", "trailing whitespace"),
                                           ("error_authentication", "invalid x-api-key")])
def test_client_errors_fail_at_once_with_the_api_message(replay, teacher_for, name, message):
    replay.push(name)
    [result] = teacher_for().generate([TeacherRequest(CHAT, "", n=1, max_tokens=8, temperature=0.0,
                                                      key="seq 1 anchor 2")])
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert "seq 1 anchor 2" in result.error and message in result.error and KEY not in result.error
    assert str(fixture("anthropic", name)["status"]) in result.error


def test_one_failed_sample_fails_the_request_never_fewer_texts(replay, teacher_for):
    # n=3: one of the three calls gets a 400, so the request is reported failed, not 2 texts.
    replay.push("message_prefill", "error_invalid_request", "message_prefill")
    [result] = teacher_for(max_concurrency=1).generate(
        [TeacherRequest(CHAT, "12 + 7 = ", n=3, max_tokens=32, temperature=0.7)])
    assert result.texts is None and "400" in result.error


def test_a_model_that_refuses_prefill_is_a_config_error_naming_instruct_mode(replay, teacher_for):
    replay.push("error_prefill_unsupported", "message_prefill")
    [result] = teacher_for(max_retries=3).generate(
        [TeacherRequest(CHAT, "12 + 7 = ", n=1, max_tokens=32, temperature=0.7, key="seq 4 anchor 1")])
    assert result.texts is None and result.retries == 0 and len(replay.requests) == 1
    assert "config error" in result.error and "teacher.completion_mode=instruct" in result.error
    assert "not retried" in result.error and "seq 4 anchor 1" in result.error and KEY not in result.error
    # Any other 400 stays the API's own message, not this advice.
    replay.queue[:] = [fixture("anthropic", "error_invalid_request")]
    [other] = teacher_for().generate([TeacherRequest(CHAT, "", n=1, max_tokens=8, temperature=0.0)])
    assert "trailing whitespace" in other.error and "completion_mode" not in other.error


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OMNIOPD_TEST_UNSET_KEY", raising=False)
    cfg = TeacherConfig(kind="anthropic", model="claude-sonnet-4-5", api_key_env="OMNIOPD_TEST_UNSET_KEY")
    with pytest.raises(MissingKeyError, match="OMNIOPD_TEST_UNSET_KEY"):
        build_teacher(cfg, cache_path=None)
