"""Student rollouts: `build_generator(cfg, model_path)` -> a `StudentGenerator` (vLLM or HF backend).

vLLM is imported only when the vLLM backend is used.
"""

from __future__ import annotations

import logging

from omniopd.config import GenerationConfig
from omniopd.rollout.student.base import GeneratorStartError, Sample, StudentGenerator, chat_prompt_ids

log = logging.getLogger(__name__)

__all__ = ["GeneratorStartError", "Sample", "StudentGenerator", "build_generator", "chat_prompt_ids"]


def build_generator(cfg: GenerationConfig, model_path: str, *, hf_model=None,
                    tokenizer=None, serving_threads: int | None = None) -> StudentGenerator:
    """The generator `cfg.backend` names; 'auto' takes vLLM when it imports and starts, else HF.

    `hf_model` (the trainer's model) is what the HF backend generates with, sharing its weights; without
    it the HF backend loads `model_path` itself. It also sets vLLM's dtype when `cfg.dtype` is 'auto'.
    `serving_threads`: the torch threads a vLLM engine computes with on CPU (None: the constructing thread's).
    """
    if cfg.backend in ("vllm", "auto"):
        from omniopd.rollout.student.vllm_backend import VLLMGenerator

        try:
            return VLLMGenerator(
                model_path, dtype=_vllm_dtype(cfg, model_path, hf_model), seed=cfg.seed,
                enforce_eager=cfg.enforce_eager, kv_cache_gib=cfg.kv_cache_gib,
                gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
                start_timeout_s=cfg.start_timeout_s, tokenizer=tokenizer,
                tensor_parallel_size=cfg.tensor_parallel_size, sleep_level=cfg.sleep_level,
                serving_threads=serving_threads)
        except GeneratorStartError as e:
            if cfg.backend == "vllm":
                raise GeneratorStartError(f"{e} (generation.backend=vllm; set it to 'auto' or 'hf' to "
                                          "fall back to HF generate)") from e
            log.warning("student generator: %s; falling back to HF generate (slower)", e)
    elif cfg.backend != "hf":
        raise ValueError(f"generation.backend={cfg.backend!r}: must be 'auto', 'vllm' or 'hf'")
    return _hf_generator(model_path, hf_model, tokenizer)


def _hf_generator(model_path: str, hf_model, tokenizer) -> StudentGenerator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.rollout.student.hf import HFGenerator

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(model_path)
    return HFGenerator(hf_model, tokenizer)


def _vllm_dtype(cfg: GenerationConfig, model_path: str, hf_model) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    if hf_model is not None:
        return str(next(hf_model.parameters()).dtype).removeprefix("torch.")
    return "auto"  # vLLM's choice for the checkpoint (on CPU it may run a float32 checkpoint in bf16)
