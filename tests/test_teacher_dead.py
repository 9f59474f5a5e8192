"""A dead teacher is loud: a real `python -m omniopd.train` run whose OpenAI-compatible teacher answers the
start-up check (its model listing) and then drops every request stops with the teacher's error after
`teacher.max_failed_steps` all-failed steps, exits with 2 and one line, and the count survives a checkpoint
and `--resume`. (An address that does not answer at all is refused before training: tests/test_run_faults.py.)
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from omniopd.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
# One prompt, one 16-token rollout, forks of 4 tokens, 2 continuations: only the failure matters here.
TINY = ["--train.batch_size=1", "--generation.n=1", "--generation.max_new_tokens=16", "--audit.chunk_len=4",
        "--audit.num_continuations=2", "--generation.backend=hf", "--log.tensorboard=false", "--log.plots=false",
        "--train.eval_before=false", "--train.eval_after=false", "--checkpoint.export=false",
        "--teacher.kind=openai", "--teacher.model=smollm2-135m", "--teacher.completion_mode=chat",
        "--teacher.max_retries=0", "--teacher.cache=off", "--teacher.api_key_env=OMNIOPD_TEST_NO_KEY",
        "--teacher.max_failed_steps=2"]


class _DiesAfterListing(http.server.BaseHTTPRequestHandler):
    """Lists the teacher's model (the start-up check passes), then drops every generation request unanswered."""

    def do_GET(self):  # noqa: N802 - the http.server API
        body = json.dumps({"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.close_connection = True  # no reply: the client sees the connection drop

    def log_message(self, *args):
        pass


@pytest.fixture
def dying_teacher_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiesAfterListing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _train(out: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={out}", f"--teacher.base_url=http://127.0.0.1:{port}/v1",
           *TINY, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OMNIOPD_TEST_NO_KEY", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_dead_teacher_stops_the_run_and_the_count_survives_resume(tmp_path, dying_teacher_port):
    port = dying_teacher_port
    # One step with every request failed: below the limit, so the run finishes (exit 0) and saves the count.
    first = _train(tmp_path, port, "--train.steps=1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "teacher requests failed (1/2)" in first.stdout
    [row] = read_metrics(tmp_path / "metrics.jsonl")
    assert row["step"] == 1 and row["teacher/failed_requests"] >= 1

    # Resumed: the very next all-failed step is the second in a row (the count came back from the checkpoint),
    # so the run stops there with the teacher's own error, instead of training on a KL term alone.
    second = _train(tmp_path, port, "--train.steps=3", "--resume")
    assert second.returncode == 2, second.stdout[-3000:]
    assert "teacher requests failed (2/2)" in second.stdout
    assert "Traceback" not in second.stderr
    last_line = second.stderr.strip().splitlines()[-1]
    assert last_line.startswith("omniopd.train: error: the teacher failed every request for 2 steps in a row")
    assert "connection error" in last_line and "step 1 rank 0 seq 0 anchor" in last_line, last_line
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]  # step 2 never completed


def test_dead_teacher_stops_an_sft_run_after_skipped_steps(tmp_path, dying_teacher_port):
    # sft trains on teacher-written responses only: with none, the step is skipped (every rank together) and
    # counted, and the run stops at the limit with the teacher's error, as an omniopd run does.
    run = _train(tmp_path, dying_teacher_port, "--objective.name=sft", "--train.steps=3")
    assert run.returncode == 2, run.stdout[-3000:]
    assert "teacher requests failed (1/2)" in run.stdout and "teacher requests failed (2/2)" in run.stdout
    assert "step skipped" in run.stdout
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("omniopd.train: error: the teacher failed every request"), last_line
    assert "connection error" in last_line and "sft " in last_line, last_line
    [row] = read_metrics(tmp_path / "metrics.jsonl")
    assert row["step"] == 1 and row["train/skipped_no_teacher"] == 1 and row["teacher/failed_requests"] == 1
    assert "time/generate_s" not in row  # the student samples nothing for sft
