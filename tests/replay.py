"""A loopback HTTP server that answers each POST with the next queued canned reply (tests/fixtures/<provider>/,
hand-written in the provider's documented wire format, not recorded from the live service: {"status", "headers",
"body"}) and records every request, so a test checks what the real SDK client sent as well as what the teacher
made of the reply."""

from __future__ import annotations

import json
import time
from pathlib import Path

from loopback import JsonHandler, Loopback

FIXTURES = Path(__file__).parent / "fixtures"


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
                "status": 418, "headers": {}, "body": {"error": {"code": 418, "message": "replay queue is empty"}}}
        request.reply(reply["status"], json.dumps(reply["body"]).encode(), reply["headers"])
