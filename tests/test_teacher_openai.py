"""OpenAI-compatible teacher against a real vLLM server of the bundled SmolLM2 on loopback (the session's
`vllm_server`, tests/vllm_server.py), directly and through a fault-injecting proxy of our own.

The server requires an API key (so every test also checks the key is sent); a pass-through proxy in front
of it counts the generation requests it serves.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
from latency_proxy import LatencyProxy
from loopback import JsonHandler, Loopback, api_teachers, forward
from vllm_server import API_KEY as KEY

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers import TeacherRequest, build_teacher

KEY_ENV = "OMNIOPD_TEST_OPENAI_KEY"
MODEL = "smollm2-135m"
CHAT = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]


@pytest.fixture(scope="module")
def upstream(vllm_server):
    """A pass-through proxy in front of the session's real vLLM server: it counts the requests served."""
    with LatencyProxy(vllm_server.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def server(upstream) -> str:
    return upstream.url


def served(upstream) -> int:
    """Generation requests that reached the server so far."""
    return len(upstream.arrivals)


class FaultProxy(Loopback):
    """A loopback HTTP proxy that misbehaves on purpose, per request, following a script.

    The case is read from the request body ("case:NAME" in the prompt); its k-th arrival gets
    `script[NAME][k]`, or is passed through once the script runs out. Actions: drop (close without
    a reply), hang (say nothing for a minute), 500, 429 (Retry-After: 1), 400, echo401 (a 401 that
    quotes the Authorization header back), empty (a 200 with `{}`), truncate (valid HTTP, JSON cut
    in half), fewer (one choice removed), ok (pass through).
    """

    def __init__(self, upstream: str, script: dict[str, list[str]]):
        self.upstream, self.script = upstream, script
        self.arrivals: list[tuple[str, str, float, dict]] = []
        self.stop = threading.Event()
        super().__init__()

    def serve(self, request: JsonHandler, method: str) -> None:
        raw = request.body()
        match = re.search(r"case:(\w+)", raw.decode())
        case = match.group(1) if match else "?"
        with self.lock:
            k = sum(1 for a in self.arrivals if a[0] == case)
            steps = self.script.get(case, [])
            action = steps[k] if k < len(steps) else "ok"
            self.arrivals.append((case, action, time.monotonic(), json.loads(raw)))
        error = lambda kind: json.dumps({"error": {"message": kind, "type": kind}}).encode()
        if action in ("drop", "hang"):
            if action == "hang":
                self.stop.wait(60)
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if action in ("500", "400"):
            return request.reply(int(action), error(f"injected {action}"))
        if action == "empty":
            return request.reply(200, b"{}")
        if action == "429":
            return request.reply(429, error("rate limited"), {"Retry-After": "1"})
        if action == "echo401":
            return request.reply(401, error(f"Incorrect API key provided: {request.headers['Authorization']}"))
        status, body = forward(self.upstream, "POST", request.path, raw, {
            "Content-Type": "application/json", "Authorization": request.headers["Authorization"]}, timeout_s=120)
        if action == "truncate":
            body = body[: len(body) // 2]
        elif action == "fewer":
            data = json.loads(body)
            data["choices"] = data["choices"][:-1]
            body = json.dumps(data).encode()
        request.reply(status, body)

    def times(self, case: str) -> list[float]:
        return [t for c, _, t, _ in self.arrivals if c == case]

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.fixture()
def make_teacher(monkeypatch):
    """make(server root, cache_path=None, **fields): an OpenAI teacher of the bundled model behind `server`."""
    with api_teachers(monkeypatch, KEY_ENV, KEY, tokenizer_path=MODEL, kind="openai", model=MODEL,
                      completion_mode="completions", timeout_s=60.0, max_retries=3, retry_backoff_s=0.05,
                      step_deadline_s=120.0) as make:
        yield lambda root, cache_path=None, **fields: make(cache_path, base_url=f"{root}/v1", **fields)


@pytest.fixture()
def proxy_for(server):
    made = []

    def make(script: dict[str, list[str]]) -> FaultProxy:
        made.append(FaultProxy(server, script))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture(scope="module")
def call_seconds(server) -> float:
    """Timeouts scaled to how fast the real server answers on this (shared, busy) machine right now."""
    cfg = TeacherConfig(kind="openai", model=MODEL, base_url=f"{server}/v1", api_key_env=KEY_ENV,
                        completion_mode="chat", max_retries=0, timeout_s=120)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        teacher = build_teacher(cfg, cache_path=None)
    try:
        start = time.monotonic()
        [result] = teacher.generate([TeacherRequest(CHAT, "12 + 7 =", n=2, max_tokens=4, temperature=0.0)])
        assert result.error is None, result.error
        return time.monotonic() - start
    finally:
        teacher.close()


def timeout_for(call_seconds: float) -> float:
    """Long enough for a real call queued behind another while the machine's load swings, short enough
    to keep the tests quick."""
    return min(60.0, max(10.0, 8 * call_seconds))


def case(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is 12 + 7? Answer briefly. (case:{name})"}]


def _greedy_reference(model, tok, prefix: str) -> tuple[str, int]:
    """transformers' own chat template and greedy `generate`, in this process."""
    import torch

    text = tok.apply_chat_template(CHAT + [{"role": "assistant", "content": prefix}], continue_final_message=True,
                                   tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


def test_continuations_start_where_the_prefix_ended(server, upstream, make_teacher):
    import torch

    from omniopd.assets import load_student

    prefix = "12 + 7 ="
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server does; two OpenMP threads crawl on a busy 2-core box
    try:
        model, tok = load_student(MODEL)
        reference, n_prompt = _greedy_reference(model, tok, prefix)
    finally:
        torch.set_num_threads(threads)
    assert reference.strip()

    before = served(upstream)
    greedy = TeacherRequest(CHAT, prefix, n=2, max_tokens=6, temperature=0.0, key="greedy")
    sampled = TeacherRequest(CHAT, prefix, n=3, max_tokens=6, temperature=1.0, seed=7, key="sampled")
    for mode in ("completions", "chat"):
        results = make_teacher(server, completion_mode=mode).generate([greedy, sampled])
        assert results[0].texts == [reference, reference], mode
        assert results[1].error is None and len(results[1].texts) == 3
        assert results[0].prompt_tokens == n_prompt and results[0].completion_tokens > 0
    # One HTTP request per prefix carries all n samples.
    assert served(upstream) - before == 4


def test_requests_go_out_in_ascending_prefix_order(server, make_teacher, proxy_for):
    proxy = proxy_for({})
    teacher = make_teacher(proxy.url, max_concurrency=1)
    prefixes = ["12 + 7 = 1", "", "12 +"]
    results = teacher.generate([TeacherRequest(case("order"), p, n=1, max_tokens=1, temperature=0.0)
                                for p in prefixes])
    assert all(r.texts is not None for r in results)
    sent = [a[3]["prompt"] for a in proxy.arrivals]
    assert [s.endswith(p) for s, p in zip(sent, ["", "12 +", "12 + 7 = 1"])] == [True] * 3
    assert len(sent[0]) < len(sent[1]) < len(sent[2])


def test_faults_end_complete_or_reported_failed_with_retries_counted(server, upstream, make_teacher, proxy_for,
                                                                     call_seconds):
    script = {"ok": [], "drop": ["drop"], "slow": ["hang"], "e500": ["500", "500"], "r429": ["429"],
              "trunc": ["truncate"], "empty": ["empty"], "fewer": ["fewer"], "fewer_always": ["fewer"] * 9,
              "e500_always": ["500"] * 9, "bad": ["400"]}
    expected = {"ok": 0, "drop": 1, "slow": 1, "e500": 2, "r429": 1, "trunc": 1, "empty": 1, "fewer": 1,
                "fewer_always": 2, "e500_always": 2, "bad": 0}
    failing = {"fewer_always": "asked for 2", "e500_always": "500", "bad": "400"}
    proxy = proxy_for(script)
    timeout = timeout_for(call_seconds)
    teacher = make_teacher(proxy.url, timeout_s=timeout, max_concurrency=2, max_retries=2)
    before = served(upstream)
    requests = [TeacherRequest(case(name), "12 + 7 =", n=2, max_tokens=3, temperature=0.8, seed=i, key=name)
                for i, name in enumerate(script)]
    start = time.monotonic()
    results = teacher.generate(requests)
    assert time.monotonic() - start < 3 * timeout + 20 * call_seconds
    for name, result in zip(script, results):
        assert result.retries == expected[name], (name, result)
        if name in failing:
            assert result.texts is None and failing[name] in result.error and name in result.error, result
        else:
            assert result.error is None and len(result.texts) == 2 and all(isinstance(t, str) for t in result.texts)
    gap = proxy.times("r429")
    assert gap[1] - gap[0] >= 0.95  # Retry-After: 1 honoured
    usage = teacher.usage()["last"]
    assert usage["failures"] == 3 and usage["retries"] == sum(expected.values())
    # The server saw exactly the requests the proxy let through (ok, truncate, fewer).
    passed = sum(1 for _, action, _, _ in proxy.arrivals if action in ("ok", "truncate", "fewer"))
    assert served(upstream) - before == passed


def test_step_deadline_reports_outstanding_requests_failed(server, make_teacher, proxy_for, call_seconds):
    proxy = proxy_for({"stuck": ["hang"] * 50})
    timeout = timeout_for(call_seconds)
    deadline = 1.6 * timeout  # one timed-out attempt, one retry cut short by the deadline
    teacher = make_teacher(proxy.url, timeout_s=timeout, max_retries=50, step_deadline_s=deadline)
    start = time.monotonic()
    stuck, fine = teacher.generate([
        TeacherRequest(case("stuck"), "", n=2, max_tokens=2, temperature=0.0, key="stuck"),
        TeacherRequest(case("fine"), "", n=2, max_tokens=2, temperature=0.0, key="fine")])
    elapsed = time.monotonic() - start
    assert elapsed < deadline + 2.0, elapsed
    assert fine.error is None and len(fine.texts) == 2
    assert stuck.texts is None and "deadline" in stuck.error and "stuck" in stuck.error
    assert stuck.retries >= 1


def test_second_identical_run_makes_no_server_calls(server, upstream, make_teacher, tmp_path):
    cache = str(tmp_path / "teacher_cache.sqlite")
    requests = [TeacherRequest(CHAT, "12 + 7 =", n=2, max_tokens=4, temperature=0.8, seed=1),
                TeacherRequest(CHAT, "", n=2, max_tokens=4, temperature=0.8, seed=2)]
    before = served(upstream)
    first = make_teacher(server, cache, price_in_per_mtok=1.0, price_out_per_mtok=2.0).generate(requests)
    assert served(upstream) - before == 2 and not any(r.cached for r in first)
    second_teacher = make_teacher(server, cache, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    second = second_teacher.generate(requests)
    assert served(upstream) - before == 2  # zero new calls
    assert [r.texts for r in second] == [r.texts for r in first] and all(r.cached for r in second)
    usage = second_teacher.usage()["last"]
    assert usage["cache_hits"] == 2 and usage["cost_usd"] == 0.0


def test_api_key_never_reaches_logs_or_files(server, make_teacher, proxy_for, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the SDK and httpx log requests and errors at DEBUG/INFO
    proxy = proxy_for({"e500": ["500"], "leak": ["echo401"]})
    try:
        teacher = make_teacher(proxy.url, str(run_dir / "teacher_cache.sqlite"), max_retries=1)
        results = teacher.generate([TeacherRequest(case(name), "12 + 7 =", n=2, max_tokens=3, temperature=0.5,
                                                   key=name) for name in ("ok", "e500", "leak")])
        (run_dir / "usage.json").write_text(json.dumps(teacher.usage()))
        (run_dir / "errors.txt").write_text("\n".join(str(r.error) for r in results))
        logging.getLogger("omniopd.test").error("request failed", exc_info=RuntimeError(f"echo {KEY}"))
        teacher.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    assert [r.texts is not None for r in results] == [True, True, False]
    assert "[REDACTED]" in results[2].error  # the server echoed the key; it was scrubbed
    # The key really went out (the server requires it) and logs were really written...
    assert all(a[3] for a in proxy.arrivals) and (run_dir / "run.log").stat().st_size > 0
    assert "[REDACTED]" in (run_dir / "run.log").read_text()
    # ...yet no file of the run holds it.
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
