"""A small, real OpenAI-compatible HTTP server for a local HF model (by default the bundled SmolLM2).

    python -m omniopd.serve --model smollm2-135m --port 8000 [--api-key-env NAME]

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (with `n`, `max_tokens`, `temperature`,
`seed`, `usage`, and vLLM's `continue_final_message` / `add_generation_prompt`), `GET /v1/models`,
`GET /health`, and `GET /stats` (requests served per route; tests count network calls with it).
No streaming, no `stop`, no logprobs. Requests are sampled one at a time (one model, one lock);
each request's `n` samples share one batch. It prints `omniopd.serve listening on http://HOST:PORT`
once ready (`--port 0` picks a free port). It is for tests and small offline teachers, not production.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("omniopd.serve")


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400; the message names the field."""


def _field(body: dict, name: str, kind: type, default: Any, *, minimum: float | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise BadRequest(f"'{name}' must be of type {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadRequest(f"'{name}' must be >= {minimum}, got {value!r}")
    return value


class Engine:
    """The model, its tokenizer and a lock; turns parsed requests into samples."""

    def __init__(self, model_name: str, served_name: str):
        import torch

        from omniopd.assets import load_student
        from omniopd.rollout.teachers.sampling import eos_ids

        torch.set_grad_enabled(False)
        self.model, self.tokenizer = load_student(model_name, "float32", "cpu")
        self.model.eval()
        self.served_name = served_name
        self.stop = eos_ids(self.model, self.tokenizer)
        self.lock = threading.Lock()

    def sampling_params(self, body: dict) -> tuple[int, int, float, int | None]:
        n = _field(body, "n", int, 1, minimum=1)
        if n > 64:
            raise BadRequest(f"'n' must be <= 64, got {n}")
        max_tokens = _field(body, "max_tokens", int, None, minimum=1)
        if max_tokens is None:
            max_tokens = _field(body, "max_completion_tokens", int, 16, minimum=1)
        temperature = _field(body, "temperature", float, 1.0, minimum=0.0)
        seed = _field(body, "seed", int, None)
        for unsupported in ("stream", "logprobs", "echo", "stop", "best_of"):
            if body.get(unsupported) not in (None, False, [], 1 if unsupported == "best_of" else None):
                raise BadRequest(f"'{unsupported}' is not supported by omniopd.serve")
        return n, max_tokens, temperature, seed

    def generate(self, prompt_ids: list[int], n: int, max_tokens: int, temperature: float,
                 seed: int | None) -> tuple[list[tuple[str, str]], int]:
        from omniopd.rollout.teachers.sampling import sample

        if not prompt_ids:
            raise BadRequest("the prompt is empty")
        limit = self.model.config.max_position_embeddings
        if len(prompt_ids) + max_tokens > limit:
            raise BadRequest(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                             f"model's context of {limit}")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self.lock:
            samples = sample(self.model, [prompt_ids], [n], [max_tokens], [temperature], [seed], self.stop,
                             pad)[0]
        outs = [(self.tokenizer.decode(s.tokens, skip_special_tokens=True), s.finish_reason) for s in samples]
        return outs, sum(len(s.tokens) for s in samples)

    def completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string (one prompt per request)")
        n, max_tokens, temperature, seed = self.sampling_params(body)
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        outs, completion_tokens = self.generate(ids, n, max_tokens, temperature, seed)
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(outs)]
        return self._envelope("cmpl", "text_completion", choices, len(ids), completion_tokens)

    def chat(self, body: dict) -> dict:
        from omniopd.rollout.teachers.chat import render_prompt

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise BadRequest(f"messages[{i}] must have role system/user/assistant and string content")
        cont = _field(body, "continue_final_message", bool, False)
        add_gen = _field(body, "add_generation_prompt", bool, not cont)
        if cont and add_gen:
            raise BadRequest("'continue_final_message' and 'add_generation_prompt' cannot both be true")
        if cont:
            if messages[-1]["role"] != "assistant":
                raise BadRequest("'continue_final_message' needs a final assistant message")
            prompt = render_prompt(self.tokenizer, messages[:-1], messages[-1]["content"])
        else:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_gen,
                                                        tokenize=False)
        n, max_tokens, temperature, seed = self.sampling_params(body)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        outs, completion_tokens = self.generate(ids, n, max_tokens, temperature, seed)
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason) in enumerate(outs)]
        return self._envelope("chatcmpl", "chat.completion", choices, len(ids), completion_tokens)

    def _envelope(self, prefix: str, obj: str, choices: list, prompt_tokens: int,
                  completion_tokens: int) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
                "model": self.served_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def make_handler(engine: Engine, api_key: str | None, stats: dict[str, int], stats_lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect

        def log_message(self, fmt: str, *args) -> None:  # the request line only; never headers
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": engine.served_name, "object": "model",
                                                             "created": 0, "owned_by": "omniopd"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/stats":
                with stats_lock:
                    self._send(200, {"requests": sum(stats.values()), "by_route": dict(stats)})
            else:
                self._error(404, f"no route GET {self.path}", "not_found_error")

        def do_POST(self) -> None:  # noqa: N802
            routes = {"/v1/completions": engine.completions, "/v1/chat/completions": engine.chat}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path not in routes:
                return self._error(404, f"no route POST {self.path}", "not_found_error")
            with stats_lock:
                stats[self.path] = stats.get(self.path, 0) + 1
            if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                return self._error(401, "invalid or missing API key", "authentication_error")
            try:
                body = json.loads(raw or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                model = body.get("model")
                if model not in (None, engine.served_name):
                    raise BadRequest(f"model {model!r} is not served here (serving {engine.served_name!r})")
                self._send(200, routes[self.path](body))
            except json.JSONDecodeError as e:
                self._error(400, f"invalid JSON body: {e}")
            except BadRequest as e:
                self._error(400, str(e))
            except Exception as e:  # noqa: BLE001 - reported to the client as a 500, logged here
                log.exception("request to %s failed", self.path)
                self._error(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m omniopd.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model alias or HF folder")
    parser.add_argument("--served-model-name", default=None,
                        help="name clients send as 'model' (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key-env", default="",
                        help="require 'Authorization: Bearer $NAME' (env var name)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    import torch

    torch.set_num_threads(args.threads)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    engine = Engine(args.model, args.served_model_name or args.model)
    stats: dict[str, int] = {}
    handler = make_handler(engine, api_key, stats, threading.Lock())
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"omniopd.serve listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
