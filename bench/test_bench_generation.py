"""Student generation: tokens/s of vLLM vs HF `generate` at n=4 on the same prompts, and swap time.

`pytest bench/test_bench_generation.py --benchmark-only -s`. Correctness first: greedy token ids of the
two backends must agree on the prompts, or no speed is reported. Numbers land in `benchmark.extra_info`
(see bench/results/generation_cpu.md for a run on the shared 2-core CPU host).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omniopd.assets import load_student, student_path  # noqa: E402
from omniopd.config import GenerationConfig  # noqa: E402
from omniopd.rollout.student import build_generator  # noqa: E402

PROMPTS = [[{"role": "user", "content": q}] for q in (
    "What is 12 times 7? Explain step by step.", "Write a short story about a robot.",
    "Why is the sky blue?", "Give three tips for learning to code.")]
SAMPLING = dict(n=4, temperature=1.0, top_p=1.0, max_new_tokens=64)
TOKENS_PER_S: dict[str, float] = {}


@pytest.fixture(scope="module")
def generators():
    model, tokenizer = load_student("smollm2-135m", dtype="float32")
    gens = {name: build_generator(GenerationConfig(backend=name, kv_cache_gib=0.25, max_model_len=1024),
                                  student_path(), hf_model=model, tokenizer=tokenizer)
            for name in ("vllm", "hf")}
    greedy = {name: [s.token_ids for r in g.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0,
                                                      max_new_tokens=16) for s in r]
              for name, g in gens.items()}
    assert greedy["vllm"] == greedy["hf"], "vLLM and HF disagree on greedy ids: refusing to report speed"
    yield gens, model
    for g in gens.values():
        g.close()


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_bench_generate_n4(benchmark, generators, backend):
    gens, _ = generators
    gen = gens[backend]
    rates = []

    def run():
        t0 = time.perf_counter()
        out = gen.generate(PROMPTS, **SAMPLING)
        rates.append(sum(len(s.token_ids) for r in out for s in r) / (time.perf_counter() - t0))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    TOKENS_PER_S[backend] = statistics.median(rates[1:])  # the warm-up round is not counted
    benchmark.extra_info.update(backend=backend, prompts=len(PROMPTS), **SAMPLING,
                                tokens_per_s=round(TOKENS_PER_S[backend], 1),
                                torch_threads=torch.get_num_threads())
    if len(TOKENS_PER_S) == 2:
        benchmark.extra_info["vllm_over_hf"] = round(TOKENS_PER_S["vllm"] / TOKENS_PER_S["hf"], 2)
    print(f"{backend}: {TOKENS_PER_S[backend]:.1f} tokens/s (n=4, {len(PROMPTS)} prompts)")


def test_bench_weight_swap(benchmark, generators):
    gens, model = generators
    gen = gens["vllm"]
    cpu = []

    def swap():
        c0 = time.process_time()
        gen.update_weights(model.named_parameters())
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(swap, rounds=10, iterations=1, warmup_rounds=1)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    wall = benchmark.stats.stats.median
    benchmark.extra_info.update(params_mib=round(nbytes / 2**20), median_wall_s=round(wall, 3),
                                median_cpu_s=round(statistics.median(cpu[1:]), 3),
                                mib_per_s=round(nbytes / 2**20 / wall))
    print(f"swap of {nbytes / 2**20:.0f} MiB: median {wall:.3f} s wall, "
          f"{statistics.median(cpu[1:]):.3f} s CPU (process time)")
