"""A teacher running in this process: sampled with vLLM (`local_vllm.py`: prefix caching, one prefill per
fork for its N continuations), or, when vLLM is unavailable or `teacher.local_backend=hf`, with a
transformers model in batches with per-request seeds.

It is also the white-box teacher of the `opd` baseline: `token_logprobs` gives its exact log-probability of
each token of any sequence (with the student's tokenizer when both are the same model), from the
transformers model, loaded on first use when vLLM samples. Both run in `dtype` (the trainer's compute dtype).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import Teacher, TeacherRequest, TeacherResult
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.chat import render_prompt
from omniopd.rollout.teachers.sampling import eos_ids, position_ids, sample

_MAX_ROWS = 64  # sampled rows per forward batch; bounds memory on long prompts
log = logging.getLogger("omniopd.teacher")


class LocalTeacher(Teacher):
    kind = "local"

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None, *, device: str | None = None,
                 model=None, tokenizer=None, dtype: str = "float32", serving_threads: int | None = None):
        super().__init__(cfg, cache)
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._dtype, self._serving_threads = dtype, serving_threads
        self._model = model.eval() if model is not None else None
        self.sampler = None if model is not None else self._start_vllm()
        if tokenizer is None:
            from transformers import AutoTokenizer

            from omniopd.assets import student_path

            tokenizer = AutoTokenizer.from_pretrained(student_path(cfg.model))
        self.tokenizer = tokenizer
        # vLLM schedules any number of rows itself; the HF sampler holds a KV cache per row
        self._max_rows = 4096 if self.sampler is not None else _MAX_ROWS
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _start_vllm(self):
        """The vLLM sampler, or None (HF) for local_backend='hf' or, under 'auto', when vLLM cannot start."""
        if self.cfg.local_backend == "hf":
            return None
        from omniopd.assets import student_path
        from omniopd.rollout.student.base import GeneratorStartError
        from omniopd.rollout.teachers.local_vllm import VLLMSampler

        try:
            return VLLMSampler(student_path(self.cfg.model), dtype=self._dtype, kv_cache_gib=self.cfg.kv_cache_gib,
                               gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                               serving_threads=self._serving_threads)
        except GeneratorStartError as e:
            if self.cfg.local_backend == "vllm":
                raise
            log.warning("local teacher: %s; sampling with HF instead (one prefill per continuation, slower)", e)
            return None

    @property
    def model(self):
        """The transformers model (HF sampling, and `token_logprobs` for opd), loaded on first use."""
        if self._model is None:
            from omniopd.assets import load_student

            self._model = load_student(self.cfg.model, self._dtype, self._device)[0].eval()
        return self._model

    @property
    def backend(self) -> str:
        return "vllm" if self.sampler is not None else "hf"

    def close(self) -> None:
        if getattr(self, "sampler", None) is not None:
            self.sampler.close()
            self.sampler = None
        super().close()

    def _run(self, requests: list[TeacherRequest],
             on_result: Callable[[int, TeacherResult], None]) -> list[TeacherResult]:
        deadline = time.monotonic() + self.cfg.step_deadline_s
        prompts = []
        for req in requests:
            text = render_prompt(self.tokenizer, req.messages, req.prefix)
            prompts.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        results: list[TeacherResult] = [None] * len(requests)  # type: ignore[list-item]
        context = self.sampler.max_model_len if self.sampler is not None else \
            getattr(self.model.config, "max_position_embeddings", None)
        batch: list[int] = []
        for i in range(len(requests) + 1):
            if i < len(requests) and context and len(prompts[i]) + requests[i].max_tokens > context:
                results[i] = TeacherResult(None, f"prompt ({len(prompts[i])} tokens) + max_tokens "
                                           f"({requests[i].max_tokens}) exceeds the model's context of {context}")
                continue
            # Close the batch when the next request would overflow it (or at the end).
            rows = sum(requests[j].n for j in batch)
            if batch and (i == len(requests) or rows + requests[i].n > self._max_rows):
                if time.monotonic() > deadline:
                    for j in batch:
                        results[j] = TeacherResult(None, f"step deadline of {self.cfg.step_deadline_s:g}s "
                                                   "passed before this request was sampled")
                else:
                    self._sample_batch(requests, prompts, batch, results, on_result)
                batch = []
            if i < len(requests):
                batch.append(i)
        return results

    def _sample_batch(self, requests, prompts, batch, results, on_result) -> None:
        if self.sampler is not None:  # the engine batches (and shares prefixes) itself
            samples = self.sampler.sample([prompts[j] for j in batch], [requests[j].n for j in batch],
                                          [requests[j].max_tokens for j in batch],
                                          [requests[j].temperature for j in batch], [requests[j].seed for j in batch])
        else:
            samples = sample(self.model, [prompts[j] for j in batch], [requests[j].n for j in batch],
                             [requests[j].max_tokens for j in batch], [requests[j].temperature for j in batch],
                             [requests[j].seed for j in batch], eos_ids(self.model, self.tokenizer), self._pad)
        for j, outs in zip(batch, samples, strict=True):
            texts = [self.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in outs]
            results[j] = TeacherResult(texts, None, len(prompts[j]), sum(len(s.tokens) for s in outs))
            on_result(j, results[j])

    @torch.no_grad()
    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       start: int = 1) -> torch.Tensor:
        """Log-probabilities of the given tokens, float32 `[B, S - start]`: column j is
        log p(input_ids[:, start + j] | input_ids[:, :start + j]).

        Computed from the teacher's last hidden states through the fused head kernel in the teacher's own
        dtype (never `[B, S, V]` logits). Left or right padding both work (positions follow
        `attention_mask`); columns at padded positions are meaningless. Token ids must come from this
        model's tokenizer.
        """
        from omniopd.heads import head_weight, last_hidden_states
        from omniopd_kernels import linear_entropy_logprob

        if input_ids.dim() != 2:
            raise ValueError("token_logprobs: input_ids must be [batch, time], got shape "
                             f"{tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"token_logprobs: attention_mask shape {tuple(attention_mask.shape)} != "
                             f"input_ids shape {tuple(input_ids.shape)}")
        if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= input_ids.shape[1]:
            raise ValueError(f"token_logprobs: start must be an int in [1, {input_ids.shape[1]}], got {start!r}")
        vocab = self.model.get_input_embeddings().num_embeddings
        if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
            raise ValueError(f"token_logprobs: token ids must be in [0, {vocab}) for teacher "
                             f"{self.cfg.model!r}")
        device = next(self.model.parameters()).device
        ids, mask = input_ids.to(device), attention_mask.to(device)
        hidden = last_hidden_states(self.model, ids, mask, position_ids(mask))[:, start - 1:-1]
        b, t, d = hidden.shape
        _, logp, _ = linear_entropy_logprob(hidden.reshape(b * t, d), head_weight(self.model),
                                            ids[:, start:].reshape(-1))
        return logp.reshape(b, t)
