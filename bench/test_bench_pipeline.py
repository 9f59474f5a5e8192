"""A step with a slow API teacher (issue 13): phase times and step time of the synchronous step, the overlapped
step and the pipelined step (`train.pipeline=1`).

`pytest bench/test_bench_pipeline.py --benchmark-only -s`. The teacher is the bundled SmolLM2 behind a real
vLLM OpenAI-compatible server set up to serve (tests/vllm_server.py with whole prompts per batch and every core),
reached through a loopback proxy that adds 2 s to every request (an API's network latency), with 8 requests in
flight at most. Each mode runs a real 4-step `python -m omniopd.train` with the bundled student; steps 2 and 3
are averaged (step 1 warms up, the last pipelined step has no next batch to produce). The table lands in
bench/results/pipeline_cpu.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from latency_proxy import LatencyProxy  # noqa: E402
from vllm_server import API_KEY, SERVED_NAME, running_vllm_server  # noqa: E402

DELAY_S, CONCURRENCY, STEPS = 2.0, 8, 4
SERVER_BATCH_TOKENS = 4096  # vLLM's --max-num-batched-tokens: every request's prompt prefilled in one batch
PHASES = ["generate", "anchors", "teacher_submit", "forward", "teacher", "teacher_wait", "score", "loss",
          "backward_step", "swap"]
# What can bound a step: everything but the waits (teacher_wait is time spent waiting on the teacher phase).
WORK = [p for p in PHASES if p not in ("teacher_wait", "teacher_submit")]
MODES = {"pipeline=0, no overlap (today)": [],
         "pipeline=0, overlap": ["--train.overlap=true"],
         "pipeline=1": ["--train.pipeline=1"]}
TARGET = {"pipeline=0, overlap": 1.5, "pipeline=1": 1.15}
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory):
    """A teacher server set up to serve (whole prompts per batch, every core), not the tests' throttled one,
    so the teacher phase is the 2 s of latency plus what batched serving costs."""
    pytest.importorskip("vllm")
    log = tmp_path_factory.mktemp("teacher_server") / "server.log"
    server = running_vllm_server(log, chunk_tokens=SERVER_BATCH_TOKENS, threads=os.cpu_count() or 1)
    with server as running, LatencyProxy(running.url, delay_s=DELAY_S) as proxy:
        yield proxy.url


@pytest.mark.parametrize("mode", list(MODES))
def test_step_with_a_slow_teacher(benchmark, tmp_path, slow_teacher, mode):
    def run() -> list[dict]:
        cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={tmp_path}", f"--train.steps={STEPS}",
               "--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=48",
               "--audit.num_chunks=2", "--audit.chunk_len=8", "--audit.num_continuations=4",
               "--teacher.kind=openai", f"--teacher.model={SERVED_NAME}", f"--teacher.base_url={slow_teacher}/v1",
               "--teacher.api_key_env=OMNIOPD_BENCH_KEY", "--teacher.completion_mode=chat",
               f"--teacher.max_concurrency={CONCURRENCY}", "--teacher.cache=off",
               "--train.eval_before=false", "--train.eval_after=false", "--checkpoint.every=0",
               "--checkpoint.export=false", "--log.plots=false", "--log.tensorboard=false", *MODES[mode]]
        env = dict(os.environ, OMNIOPD_BENCH_KEY=API_KEY)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_metrics(tmp_path / "metrics.jsonl")

    rows = benchmark.pedantic(run, rounds=1, iterations=1)
    measured = [r for r in rows if r["step"] in (2, 3)]
    row = {p: sum(r.get(f"time/{p}_s", 0.0) for r in measured) / len(measured) for p in PHASES}
    row["step"] = sum(r["time/step_s"] for r in measured) / len(measured)
    row["longest_phase"] = max(WORK, key=lambda p: row[p])
    row["longest"] = row[row["longest_phase"]]
    row["ratio"] = row["step"] / row["longest"]
    row["failed_requests"] = sum(r["teacher/failed_requests"] for r in measured)
    if "pipeline/staleness" in measured[0]:
        row["staleness_max"] = max(r["pipeline/staleness"] for r in measured)
        row["ratio_mean"] = sum(r["pipeline/ratio_mean"] for r in measured) / len(measured)
    benchmark.extra_info.update(row)
    RESULTS[mode] = row
    assert row["failed_requests"] == 0  # every teacher answer arrived: the timings are of a working step


def teardown_module() -> None:
    if not RESULTS:
        return
    lines = [f"Step time with a slow API teacher: the bundled SmolLM2-135M as student and (served by the real "
             f"vLLM OpenAI-compatible server, {SERVER_BATCH_TOKENS} batched tokens, every core) as teacher, "
             f"{DELAY_S:g} s added to every teacher request by a loopback proxy, {CONCURRENCY} requests in flight "
             "at most; 2 prompts x 2 rollouts of <= 48 tokens, 2 forks of 8 tokens each, N=4. Seconds, mean of "
             f"steps 2-3 of a {STEPS}-step run, this machine (2 CPU cores, shared by the student and the server). "
             "`teacher` is the latency from sending the requests to the last answer; `teacher_wait` the part of "
             "it the step sat through; in the pipelined run `generate` runs on a thread beside the training "
             "forward and backward.", "",
             "| mode | " + " | ".join(PHASES) + " | step | longest phase | step / longest | target |",
             "|---|" + "---|" * (len(PHASES) + 4)]
    for mode, row in RESULTS.items():
        target = TARGET.get(mode)
        verdict = "" if target is None else f"<= {target} ({'met' if row['ratio'] <= target else 'not met'})"
        lines.append(f"| {mode} | " + " | ".join(f"{row[p]:.2f}" for p in PHASES)
                     + f" | {row['step']:.2f} | {row['longest_phase']} {row['longest']:.2f} | {row['ratio']:.2f}"
                     + f" | {verdict} |")
    text = "\n".join(lines) + "\n"
    print("\n\n" + text)
    out = REPO / "bench" / "results"
    (out / "pipeline_cpu.md").write_text(text)
    (out / "pipeline_cpu.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
