"""Helpers shared by the tests that talk HTTP to a teacher: loopback servers of our own (a quiet threaded
server, a handler that reads a body and sends a JSON reply, a model listing, a port nothing listens on, a
pass-through call to a real upstream) and a
factory of API teachers that closes every teacher it built."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers import build_teacher


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out or give up on a held request are what these tests make happen


class JsonHandler(BaseHTTPRequestHandler):
    """One request, over HTTP/1.1, logging nothing: `body()` reads it, `reply` answers it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        if not any(name.lower() == "content-type" for name in headers):  # canned replies carry their own
            headers["Content-Type"] = "application/json"
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Loopback:
    """A server on 127.0.0.1 (a free port, `url` its root) whose requests go to `serve(request, method)`,
    which subclasses write; runs on a daemon thread until `close()`. `lock` guards what `serve` records."""

    def __init__(self):
        self.lock = threading.Lock()
        owner = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                owner.serve(self, "POST")

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, request: JsonHandler, method: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ModelListing(Loopback):
    """A teacher server's free model listing: GET `path` answers `listing` when `accepts(headers)` (else 403);
    any other request 404."""

    def __init__(self, path: str, listing: dict, accepts: Callable[[dict[str, str]], bool] = lambda _: True):
        self.path, self.listing, self.accepts = path, listing, accepts
        super().__init__()

    def serve(self, request: JsonHandler, method: str) -> None:
        if method != "GET" or request.path != self.path:
            request.reply(404, b'{"error": "not found"}')
        elif not self.accepts({k.lower(): v for k, v in request.headers.items()}):
            request.reply(403, b'{"error": {}}')
        else:
            request.reply(200, json.dumps(self.listing).encode())


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward(upstream: str, method: str, path: str, body: bytes | None, headers: dict[str, str],
            timeout_s: float) -> tuple[int, bytes]:
    """(status, body) of the same request sent on to the server at `upstream` (http://host:port)."""
    host, port = upstream.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def api_teachers(monkeypatch: pytest.MonkeyPatch, key_env: str, key: str, *,
                 tokenizer_path: str | None = None, **defaults) -> Iterator[Callable]:
    """`make(cache_path=None, **fields)`: an API teacher of TeacherConfig(**defaults, **fields) whose key
    (`key`, exported as `key_env`) the config names; every teacher made is closed on exit."""
    monkeypatch.setenv(key_env, key)
    made = []

    def make(cache_path: str | None = None, **fields):
        cfg = TeacherConfig(**{"api_key_env": key_env, **defaults, **fields})
        made.append(build_teacher(cfg, cache_path=cache_path, tokenizer_path=tokenizer_path))
        return made[-1]

    try:
        yield make
    finally:
        for teacher in made:
            teacher.close()
