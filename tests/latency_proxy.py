"""A loopback HTTP proxy in front of a real OpenAI-compatible server: a fixed latency per request (a slow API
teacher), and optionally a teacher that stops answering mid-flight (every request after the first `answer`
is held open without a reply until the proxy closes). Used by tests/test_overlap_step.py and
bench/test_bench_pipeline.py."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up on a held request is the point, not news


class LatencyProxy:
    def __init__(self, upstream: str, delay_s: float = 0.0, answer: int | None = None):
        self.delay_s, self.answer = delay_s, answer
        self.arrivals: list[float] = []
        self.held = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self, method: str, body: bytes | None) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                conn.request(method, self.path, body, headers)
                response = conn.getresponse()
                status, data = response.status, response.read()
                conn.close()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - health and stats pass straight through
                self._forward("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy._lock:
                    proxy.arrivals.append(time.monotonic())
                    hold = proxy.answer is not None and len(proxy.arrivals) > proxy.answer
                    proxy.held += hold
                if hold:  # the teacher died mid-flight: the connection stays open, nothing comes back
                    proxy._stop.wait(600)
                    self.close_connection = True
                    return
                if proxy._stop.wait(proxy.delay_s):
                    return
                self._forward("POST", body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LatencyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
