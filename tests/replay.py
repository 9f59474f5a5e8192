"""A loopback HTTP server that answers each POST with the next queued canned reply (tests/fixtures/<provider>/,
hand-written in the provider's documented wire format, not recorded from the live service: {"status", "headers",
"body"}) and records every request, so a test checks what the real SDK client sent as well as what the teacher
made of the reply."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from loopback import JsonHandler, Loopback

FIXTURES = Path(__file__).parent / "fixtures"
# The reply to a request no canned reply was queued for (a test's own mistake), in the provider's error shape.
EMPTY = "replay queue is empty"
EMPTY_QUEUE_BODY = {"anthropic": {"type": "error", "error": {"type": "invalid_request_error", "message": EMPTY}}}


def fixture(provider: str, name: str) -> dict:
    return json.loads((FIXTURES / provider / f"{name}.json").read_text())


class Replay(Loopback):
    def __init__(self, provider: str):
        self.provider = provider
        self.queue: list[dict] = []
        self.requests: list[dict] = []
        super().__init__()

    def push(self, *names: str) -> None:
        self.queue += [fixture(self.provider, name) for name in names]

    def serve(self, request: JsonHandler, method: str) -> None:
        body = json.loads(request.body())
        with self.lock:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append({"path": request.path, "headers": headers, "body": body, "time": time.monotonic()})
            reply = self.queue.pop(0) if self.queue else {
                "status": 418, "headers": {},
                "body": EMPTY_QUEUE_BODY.get(self.provider, {"error": {"code": 418, "message": EMPTY}})}
        request.reply(reply["status"], json.dumps(reply["body"]).encode(), reply["headers"])


@contextlib.contextmanager
def replaying(provider: str) -> Iterator[Replay]:
    """A Replay of `provider`'s fixtures, closed on exit (the `replay` fixture of each provider's tests)."""
    server = Replay(provider)
    try:
        yield server
    finally:
        server.close()
