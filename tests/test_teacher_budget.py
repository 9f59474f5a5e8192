"""The API teachers' send budget: bounded concurrency, tokens and requests per minute, a 429 that slows
every sender, and a tight budget that never deadlocks nor waits past the step deadline.

The teachers (the real `openai` / `anthropic` SDKs) talk over real HTTP to a small endpoint of our own
on loopback that answers like `/v1/chat/completions` and `/v1/messages`, reports a chosen usage,
returns 429s on cue, and records when each request arrived and how many were in flight; the tests
compare those measurements with the budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import JsonHandler, Loopback, api_teachers

from omniopd.config import ConfigError, load_config
from omniopd.rollout.teachers import TeacherRequest
from omniopd.rollout.teachers.ratelimit import TokenBucket

# (status, extra headers) for the k-th arrival (k counts from 0), given its body.
Decide = Callable[[int, dict], tuple[int, dict[str, str]]]


class Endpoint(Loopback):
    """An OpenAI-style chat-completions endpoint that reports `usage` and records arrival times."""

    def __init__(self, prompt_tokens: int, completion_tokens: int, decide: Decide | None = None,
                 answer_after_s: float = 0.0):
        self.arrivals: list[tuple[float, dict, int]] = []  # (monotonic time, body, status sent)
        self.in_flight = self.most_in_flight = 0
        self.usage, self.decide, self.answer_after_s = (prompt_tokens, completion_tokens), decide, answer_after_s
        super().__init__()
        self.root, self.url = self.url, f"{self.url}/v1"

    def serve(self, request: JsonHandler, method: str) -> None:
        body = json.loads(request.body())
        with self.lock:
            k = len(self.arrivals)
            status, headers = self.decide(k, body) if self.decide else (200, {})
            self.arrivals.append((time.monotonic(), body, status))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            request.reply(status, json.dumps(self.payload(request.path, k, body, status)).encode(), headers)
        finally:
            with self.lock:
                self.in_flight -= 1

    def payload(self, path: str, k: int, body: dict, status: int) -> dict:
        prompt_tokens, completion_tokens = self.usage
        anthropic = path.endswith("/messages")
        if status == 200:
            time.sleep(self.answer_after_s)
        if status == 200 and anthropic:
            return {"id": f"msg_{k}", "type": "message", "role": "assistant", "model": body["model"],
                    "content": [{"type": "text", "text": f" reply {k}"}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}
        if status == 200:
            n = body.get("n", 1)
            return {"id": f"c{k}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": i, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f" reply {k}.{i}"}} for i in range(n)],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * n,
                              "total_tokens": prompt_tokens + completion_tokens * n}}
        if anthropic:
            return {"type": "error", "error": {"type": "rate_limit_error", "message": f"injected {status}"}}
        return {"error": {"message": f"injected {status}", "type": "rate_limit_error"}}

    def times(self, status: int | None = None) -> list[float]:
        return [t for t, _, s in self.arrivals if status is None or s == status]



@pytest.fixture()
def endpoint():
    made: list[Endpoint] = []

    def make(*args, **kwargs) -> Endpoint:
        made.append(Endpoint(*args, **kwargs))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture()
def teacher_for(monkeypatch):
    """make(base url, **fields): an API teacher (OpenAI by default) with a loose budget unless told otherwise."""
    with api_teachers(monkeypatch, "OMNIOPD_TEST_BUDGET_KEY", "sk-budget-test", kind="openai", model="budget-test",
                      completion_mode="chat", timeout_s=30.0, max_retries=3, retry_backoff_s=0.05,
                      step_deadline_s=60.0) as make:
        yield lambda url, **fields: make(base_url=url, **fields)


def requests(count: int, max_tokens: int, n: int = 1) -> list[TeacherRequest]:
    return [TeacherRequest([{"role": "user", "content": f"What is {k} + 7? Answer briefly."}], "It is", n=n,
                           max_tokens=max_tokens, temperature=0.0, key=f"req {k}") for k in range(count)]


# -- the bucket alone, against hand-computed values --------------------------------------------------------

def test_bucket_refills_at_the_rate_up_to_its_capacity_and_runs_into_debt():
    b = TokenBucket(per_minute=600, burst_s=6)  # 10 per second, at most 60 at once
    assert b.wait_s(60, now=100.0) == 0.0  # full at first use
    b.take(60, now=100.0)
    assert b.wait_s(30, now=100.0) == pytest.approx(3.0)
    assert b.wait_s(30, now=102.0) == pytest.approx(1.0)
    b.take(100, now=106.0)  # larger than the capacity: allowed from a full bucket, leaves a debt of 40
    assert b.level == pytest.approx(-40.0)
    assert b.wait_s(500, now=106.0) == pytest.approx(10.0)  # waits for a full bucket, never forever
    b.give_back(30, now=106.0)  # the reply used 30 fewer tokens than estimated
    assert b.wait_s(500, now=106.0) == pytest.approx(7.0)
    b.empty(now=200.0)  # a 429: restart from empty, not from the refilled 60
    assert b.level == 0.0 and b.wait_s(20, now=200.0) == pytest.approx(2.0)
    unlimited = TokenBucket(per_minute=0, burst_s=60)
    unlimited.take(10**9, now=0.0)
    assert unlimited.wait_s(10**9, now=0.0) == 0.0


@settings(max_examples=200, deadline=None)
@given(per_minute=st.integers(1, 10_000), burst_s=st.floats(0.1, 120),
       calls=st.lists(st.tuples(st.floats(0, 30), st.integers(1, 5_000)), min_size=1, max_size=40))
def test_bucket_never_lets_more_out_than_capacity_plus_rate_times_time(per_minute, burst_s, calls):
    """Sending each call as soon as the bucket allows: in float64, the total sent by time t never exceeds
    capacity + rate * t plus the excess of the one call that went over the capacity from a full bucket."""
    b = TokenBucket(per_minute, burst_s)
    rate, capacity = per_minute / 60, per_minute * burst_s / 60
    now, sent = 0.0, 0.0
    for gap, cost in calls:
        now += gap
        now += b.wait_s(cost, now)
        assert b.wait_s(cost, now) <= 1e-9 * max(1.0, now)
        b.take(cost, now)
        sent += cost
        assert sent <= capacity + rate * now + max(0.0, cost - capacity) + 1e-6 * sent


def test_budget_fields_are_validated_by_name():
    cfg = load_config(["--teacher.tokens_per_minute=90000", "--teacher.requests_per_minute=60",
                       "--teacher.rate_burst_s=5", "--teacher.max_failed_steps=1"])
    assert (cfg.teacher.tokens_per_minute, cfg.teacher.requests_per_minute) == (90000, 60)
    for bad in ("--teacher.tokens_per_minute=-1", "--teacher.requests_per_minute=-5", "--teacher.rate_burst_s=0",
                "--teacher.max_failed_steps=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].removeprefix("--")):
            load_config([bad])


# -- the teacher over real HTTP ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_no_more_calls_in_flight_than_max_concurrency(endpoint, teacher_for, kind):
    server = endpoint(prompt_tokens=10, completion_tokens=5, answer_after_s=0.3)
    teacher = teacher_for(server.url if kind == "openai" else server.root, kind=kind, max_concurrency=3)
    results = teacher.generate(requests(4, max_tokens=8, n=2))  # anthropic: 2 calls per request, 8 in all
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert len(server.arrivals) == (4 if kind == "openai" else 8)
    assert server.most_in_flight == 3


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_token_budget_paces_sends_and_is_corrected_by_the_reported_usage(endpoint, teacher_for, kind):
    """100 tokens/s, at most 100 at once. Each call is estimated at ~50 tokens (max_tokens 40 + the prompt)
    but the reply reports 15: without the correction the 30 calls would take ~14 s, with it ~3.5 s."""
    server = endpoint(prompt_tokens=10, completion_tokens=5)
    teacher = teacher_for(server.url if kind == "openai" else server.root, kind=kind, tokens_per_minute=6000,
                          rate_burst_s=1.0, max_concurrency=8)
    start = time.monotonic()
    results = teacher.generate(requests(30, max_tokens=40))
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    times = sorted(server.times())
    assert len(times) == 30
    used = 15
    for k, t in enumerate(times):  # never ahead of the budget, measured where the provider counts: on arrival
        assert (k + 1) * used <= 100 + 100 * (t - times[0]) + 100 * 0.05, (k, t - times[0])
    # ... and not far behind it: the refunds let the rate reach the budget in reported tokens.
    ideal = (30 * used - 100) / 100
    assert ideal - 0.1 <= times[-1] - times[0] <= 2 * ideal + 1.0, (times[-1] - times[0], elapsed)
    assert teacher.usage()["budget_wait_s"] > 0


def test_requests_per_minute_paces_sends(endpoint, teacher_for):
    server = endpoint(prompt_tokens=10, completion_tokens=5)
    teacher = teacher_for(server.url, requests_per_minute=240, rate_burst_s=0.5, max_concurrency=8)  # 4/s, 2 at once
    results = teacher.generate(requests(10, max_tokens=8))
    assert all(r.ok for r in results)
    times = sorted(server.times())
    for k, t in enumerate(times):
        assert k + 1 <= 2 + 4 * (t - times[0]) + 0.2, (k, t - times[0])
    assert times[-1] - times[0] >= (10 - 2) / 4 - 0.1


def test_a_call_larger_than_the_whole_budget_goes_out_alone(endpoint, teacher_for):
    """600 tokens per minute, a whole minute's worth at once; each call asks for up to 700 completion tokens.
    The first goes at once from the full bucket; its reply reports 30 tokens, so the second waits until the
    bucket is full again: 30 tokens at 10/s = 3 s. Nothing deadlocks, nothing goes beside it."""
    server = endpoint(prompt_tokens=10, completion_tokens=20)
    teacher = teacher_for(server.url, tokens_per_minute=600, max_concurrency=4)
    results = teacher.generate(requests(2, max_tokens=700))
    assert all(r.ok for r in results), [r.error for r in results]
    first, second = sorted(server.times())
    assert 2.7 <= second - first <= 5.0, second - first


def test_a_tight_budget_fails_fast_instead_of_waiting_past_the_deadline(endpoint, teacher_for):
    """10 tokens/s and calls of ~50 tokens each: only the first fits in a 3 s step deadline; the others are
    reported failed at once, naming the budget, instead of stalling the step."""
    server = endpoint(prompt_tokens=10, completion_tokens=40)
    teacher = teacher_for(server.url, tokens_per_minute=600, rate_burst_s=1.0, step_deadline_s=3.0)
    start = time.monotonic()
    results = teacher.generate(requests(5, max_tokens=40))
    elapsed = time.monotonic() - start
    assert elapsed < 3.0
    assert results[0].ok and len(server.arrivals) == 1
    for r in results[1:]:
        assert not r.ok and "teacher.tokens_per_minute" in r.error and "step deadline" in r.error, r.error
        assert r.error.startswith("teacher request ")  # names the request


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_429_pauses_every_sender_not_just_the_one_request(endpoint, teacher_for, kind):
    """The second arrival gets 429 with Retry-After: 1.5. Two calls may be in flight, and the 429'd one
    frees its slot while it waits: without a shared pause the others would go on sending meanwhile."""
    server = endpoint(prompt_tokens=10, completion_tokens=5, answer_after_s=0.1,
                      decide=lambda k, body: (429, {"Retry-After": "1.5"}) if k == 1 else (200, {}))
    teacher = teacher_for(server.url if kind == "openai" else server.root, kind=kind, max_concurrency=2)
    results = teacher.generate(requests(8, max_tokens=8))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    [limited] = server.times(429)
    after = [t - limited for t in server.times() if t > limited]
    assert after and min(after) >= 1.4, after
    assert teacher.usage()["rate_limit_pauses"] == 1
    assert sum(r.retries for r in results) == 1


def test_a_429_restarts_the_token_budget_from_empty(endpoint, teacher_for):
    """With a token budget, after the pause sending resumes at the budget's rate, not with a fresh burst."""
    server = endpoint(prompt_tokens=10, completion_tokens=5,
                      decide=lambda k, body: (429, {"Retry-After": "0.5"}) if k == 0 else (200, {}))
    # 60 tokens/s, at most 120 at once; each call counts 15 tokens. One at a time, so every call after the
    # first is sent after the 429 came back.
    teacher = teacher_for(server.url, tokens_per_minute=3600, rate_burst_s=2.0, max_concurrency=1)
    results = teacher.generate(requests(9, max_tokens=5))
    assert all(r.ok for r in results)
    [limited] = server.times(429)
    after = sorted(t - limited for t in server.times(200))
    assert len(after) == 9 and min(after) >= 0.45
    # From empty, 30 tokens refilled during the pause, then 60/s: the 9 calls' 135 tokens take until
    # ~2.25 s. Had the bucket kept its ~100 tokens, they would all be out by ~1.05 s.
    assert after[-1] >= 0.5 + (9 * 15 - 30) / 60 - 0.2, after


def test_input_and_output_tokens_are_budgeted_apart(endpoint, teacher_for):
    """Anthropic-style limits: 100 input tokens/s (at most 100 at once) and a loose output budget. Replies
    report 50 input and 1,000 output tokens; one call at a time, so each estimate has learnt from the replies
    before it. The input budget alone paces the 10 calls: the first two at once, then one per 0.5 s (~4 s);
    a total-token budget would have had to allow 1,050 tokens a call."""
    server = endpoint(prompt_tokens=50, completion_tokens=1000)
    teacher = teacher_for(server.root, kind="anthropic", input_tokens_per_minute=6000,
                          output_tokens_per_minute=6_000_000, rate_burst_s=1.0, max_concurrency=1)
    results = teacher.generate(requests(10, max_tokens=8))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    times = sorted(server.times())
    for k, t in enumerate(times):  # never ahead of the input budget (the first estimate is from characters)
        assert (k + 1) * 50 <= 100 + 100 * (t - times[0]) + 100 * 0.05 + 50, (k, t - times[0])
    assert (10 * 50 - 100) / 100 - 1.0 <= times[-1] - times[0] <= 2 * (10 * 50 - 100) / 100 + 1.0


def test_output_budget_is_charged_what_the_calls_ask_for(endpoint, teacher_for):
    """An output budget of 100 tokens/s, at most 100 at once; calls ask for up to 80 and report 60, one at a
    time. Each is charged 80 before it goes and refunded 20: the second waits ~0.4 s (80 needed, 40 left), the
    third ~0.6 s. The input budget is unlimited."""
    server = endpoint(prompt_tokens=10, completion_tokens=60)
    teacher = teacher_for(server.root, kind="anthropic", output_tokens_per_minute=6000, rate_burst_s=1.0,
                          max_concurrency=1)
    results = teacher.generate(requests(3, max_tokens=80))
    assert all(r.ok for r in results), [r.error for r in results]
    first, second, third = sorted(server.times())
    assert 0.3 <= second - first <= 1.5 and 0.9 <= third - first <= 3.0, (second - first, third - first)


# -- the real vLLM server of the bundled model (tests/vllm_server.py) -------------------------------------

def test_real_server_usage_paces_the_budget_and_teaches_the_estimate(vllm_server, teacher_for, monkeypatch):
    """Against the real model server: the budget holds in the tokens the server counts, and after one
    batch the estimate of a new prompt is within 15% of the server's own count (its tokenizer and chat
    template: an independent reference)."""
    from transformers import AutoTokenizer

    from omniopd.assets import student_path
    from omniopd.rollout.teachers.chat import render_prompt

    # 10 tokens/s, at most 60 at once; each call is ~44 prompt + 2 completion tokens, so three calls take
    # ~8 s under the budget and well under 3 s without it (short answers from a small model).
    monkeypatch.setenv("OMNIOPD_TEST_VLLM_KEY", vllm_server.api_key)
    teacher = teacher_for(f"{vllm_server.url}/v1", model=vllm_server.model, api_key_env="OMNIOPD_TEST_VLLM_KEY",
                          tokens_per_minute=600, rate_burst_s=6.0, max_concurrency=2)
    start = time.monotonic()
    results = teacher.generate(requests(3, max_tokens=2))
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    counted = sum(r.prompt_tokens + r.completion_tokens for r in results)
    # Charged before sending and corrected after, the calls cannot all be out before (counted - 60) / 10 s
    # (0.8: the first call's estimate, made before any usage was known, may fall short).
    assert elapsed >= 0.8 * (counted - 60) / 10, (elapsed, counted)

    tok = AutoTokenizer.from_pretrained(student_path("smollm2-135m"))
    fresh = TeacherRequest([{"role": "user", "content": "What is 58 + 7? Answer briefly."}], "It is", n=2,
                           max_tokens=6, temperature=0.0)
    reference = len(tok(render_prompt(tok, fresh.messages, fresh.prefix), add_special_tokens=False)["input_ids"])
    estimate = teacher.estimate_tokens(fresh, 2) - 2 * 6
    assert abs(estimate - reference) <= 0.15 * reference, (estimate, reference)
