"""CPU vLLM engines at 1 torch thread (what vLLM sets for serving) vs the host's threads: the local teacher's
fork batch, a step's rollouts and a greedy held-out batch, alternating 1 and N threads on the same engines.

`pytest bench/test_bench_threads.py --benchmark-only -s`, with nothing else on the cores: the point is what an
idle host gains (under load, threads beyond the free cores spin-wait and lose). OMP_NUM_THREADS=2 and unset gave
the same table here. The work is the CPU matrix budget's: 32 hinted forks of 4 problems x 4 rollouts x 2 forks,
N=4, 16 tokens each; 4 prompts x 4 rollouts x 48 tokens; 64 greedy answers of <= 48 tokens. The table lands in
bench/results/threads_cpu.md.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omniopd.assets import student_path  # noqa: E402
from omniopd.config import load_config  # noqa: E402
from omniopd.data import load_split, student_messages, teacher_messages  # noqa: E402
from omniopd.rollout.teachers.chat import render_prompt  # noqa: E402

TRIALS = 3  # per thread count, alternating
RESULTS: dict[str, dict[int, list[float]]] = {}
OUT = Path(__file__).resolve().parent / "results" / "threads_cpu.md"


@pytest.fixture(scope="module")
def problems():
    cfg = load_config([])
    return cfg, load_split("builtin", cfg.data, "train")


def _alternate(name: str, threads: int, work) -> None:
    times: dict[int, list[float]] = {1: [], threads: []}
    for trial in range(2 * TRIALS):
        n = (1, threads)[trial % 2]
        times[n].append(work(trial, n))
    RESULTS[name] = times


def test_teacher_fork_batch(benchmark, problems):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from omniopd.rollout.teachers.local_vllm import VLLMSampler

    cfg, train = problems
    tok = AutoTokenizer.from_pretrained(student_path())
    sampler = VLLMSampler(student_path(), dtype="float32", kv_cache_gib=0.25)

    def work(trial: int, threads: int) -> float:
        prompts = []
        for p in train[4 * trial:4 * trial + 4]:  # new problems every trial: no prefix cached from the last
            messages = teacher_messages(p, cfg.data.system_prompt, "solution")
            for rollout in range(4):
                text = p.solution or p.question
                for cut in (0.3, 0.7):  # two forks per rollout, inside a solution-like response
                    prefix = text[: int(len(text) * cut * (rollout + 1) / 4)]
                    prompts.append(tok(render_prompt(tok, messages, prefix), add_special_tokens=False)["input_ids"])
        sampler._serving_threads = threads
        start = time.perf_counter()
        sampler.sample(prompts, [4] * len(prompts), [16] * len(prompts), [0.7] * len(prompts),
                       list(range(len(prompts))))
        return time.perf_counter() - start

    try:
        benchmark.pedantic(lambda: _alternate("teacher: 32 forks x N=4 x 16 tokens", os.cpu_count() or 1, work),
                           rounds=1, iterations=1)
    finally:
        sampler.close()


def test_student_rollouts_and_greedy(benchmark, problems):
    pytest.importorskip("vllm")
    from omniopd.rollout.student.vllm_backend import VLLMGenerator

    cfg, train = problems
    generator = VLLMGenerator(student_path(), kv_cache_gib=0.5)
    threads = os.cpu_count() or 1

    def rollouts(trial: int, n: int) -> float:
        generator._serving_threads = n
        start = time.perf_counter()
        generator.generate([student_messages(p, cfg.data.system_prompt) for p in train[4 * trial:4 * trial + 4]],
                           4, temperature=1.0, top_p=1.0, max_new_tokens=48)
        return time.perf_counter() - start

    def greedy(trial: int, n: int) -> float:
        generator._serving_threads = n
        start = time.perf_counter()
        generator.generate([student_messages(p, cfg.data.system_prompt)
                            for p in train[100 + 64 * trial:164 + 64 * trial]],
                           1, temperature=0.0, top_p=1.0, max_new_tokens=48)
        return time.perf_counter() - start

    def run() -> None:
        _alternate("student: 4 prompts x 4 rollouts x 48 tokens", threads, rollouts)
        _alternate("student: 64 greedy answers x <= 48 tokens", threads, greedy)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        generator.close()


def teardown_module() -> None:
    if not RESULTS:
        return
    threads = os.cpu_count() or 1
    lines = [f"CPU vLLM engines, bundled SmolLM2-135M, float32: seconds per batch at 1 torch thread (vLLM's "
             f"choice) and at {threads} (this host's cores), mean of {TRIALS} alternating trials each, nothing "
             f"else running, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. torch {torch.__version__}.",
             "",
             f"| work | 1 thread | {threads} threads | speed-up |", "|---|---|---|---|"]
    for name, times in RESULTS.items():
        one, many = statistics.fmean(times[1]), statistics.fmean(times[threads])
        lines.append(f"| {name} | {one:.2f} | {many:.2f} | {one / many:.2f}x |")
    text = "\n".join(lines) + "\n"
    print("\n\n" + text)
    OUT.write_text(text)
