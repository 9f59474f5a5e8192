"""A loopback HTTP proxy in front of a real OpenAI-compatible server: a fixed latency per request (a slow API
teacher), and optionally a teacher that stops answering mid-flight (every request after the first `answer`
is held open without a reply until the proxy closes). Used by tests/test_overlap_step.py,
tests/test_teacher_openai.py and bench/test_bench_pipeline.py."""

from __future__ import annotations

import threading
import time

from loopback import JsonHandler, Loopback, forward


class LatencyProxy(Loopback):
    """Pass-through to `upstream` after `delay_s`; `arrivals` holds when each POST came in."""

    def __init__(self, upstream: str, delay_s: float = 0.0, answer: int | None = None):
        self.upstream, self.delay_s, self.answer = upstream, delay_s, answer
        self.arrivals: list[float] = []
        self.held = 0
        self._stop = threading.Event()
        super().__init__()

    def serve(self, request: JsonHandler, method: str) -> None:
        body = request.body() if method == "POST" else None
        if method == "POST":  # health and stats (GET) pass straight through
            with self.lock:
                self.arrivals.append(time.monotonic())
                hold = self.answer is not None and len(self.arrivals) > self.answer
                self.held += hold
            if hold:  # the teacher died mid-flight: the connection stays open, nothing comes back
                self._stop.wait(600)
                request.close_connection = True
                return
            if self._stop.wait(self.delay_s):
                return
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        request.reply(*forward(self.upstream, method, request.path, body, headers, timeout_s=600))

    def close(self) -> None:
        self._stop.set()
        super().close()

    def __enter__(self) -> LatencyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
