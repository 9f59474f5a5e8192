"""The teacher's side of the sft and opd baselines: whole teacher-written responses as training rows (sft), and
a white-box teacher's log-probs of the student's tokens (opd). omniopd's teacher side is `omniopd.audit`."""

from __future__ import annotations

from typing import Any

import torch

from omniopd.audit import stable_seed
from omniopd.batch import Batch, pack
from omniopd.config import Config
from omniopd.data import Problem, student_messages, teacher_messages
from omniopd.rollout.student import Sample
from omniopd.rollout.teachers import TeacherRequest, TeacherResult


def teacher_sample(prompt_ids: list[int], text: str, tokenizer: Any, max_new_tokens: int) -> Sample:
    """sft: a teacher-written response as a training row. EOS is appended only when the teacher stopped on its
    own (fewer than `max_new_tokens` tokens); a cut-off text stays cut off, so the student is never taught to
    stop mid-sentence."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < max_new_tokens:
        ids, finish = ids + [tokenizer.eos_token_id], "stop"
    else:
        ids, finish = ids[:max_new_tokens], "length"
    return Sample(list(prompt_ids), ids, text, finish, [0.0] * len(ids))


def sft_requests(problems: list[Problem], cfg: Config) -> list[TeacherRequest]:
    """sft's teacher requests: one per problem, as many whole responses as the student's rollouts."""
    return [TeacherRequest(messages=teacher_messages(p, cfg.data.system_prompt, cfg.teacher.hint), prefix="",
                           n=cfg.generation.n, max_tokens=cfg.generation.max_new_tokens,
                           temperature=cfg.teacher.temperature, seed=stable_seed(cfg.train.seed, p.id, "sft"),
                           key=f"sft {p.id}") for p in problems]


def teacher_responses(teacher: Any, generator: Any, tokenizer: Any, problems: list[Problem],
                      cfg: Config) -> tuple[list[tuple[Problem, Sample]], list[TeacherResult]]:
    """sft: the teacher writes whole responses (as many as the student's rollouts would be), and the raw
    results (a failed request contributes no row; the trainer counts it)."""
    results = teacher.generate(sft_requests(problems, cfg))
    rows = []
    for p, result in zip(problems, results):
        prompt_ids = generator.prompt_ids(student_messages(p, cfg.data.system_prompt))
        for text in result.texts or []:
            rows.append((p, teacher_sample(prompt_ids, text, tokenizer, cfg.generation.max_new_tokens)))
    return rows, results


def teacher_logprobs(teacher: Any, generator: Any, batch: Batch, cfg: Config, pad_id: int,
                     device: torch.device) -> torch.Tensor:
    """opd: the white-box teacher's log-probs `[B, T]` of the student's tokens, in the teacher's own context
    (from its hidden states through the fused head, in its dtype)."""
    if not hasattr(teacher, "token_logprobs"):
        raise RuntimeError("objective.name=opd needs teacher.kind=local (a teacher that exposes log-probs)")
    prompts = [generator.prompt_ids(teacher_messages(p, cfg.data.system_prompt, cfg.teacher.hint))
               for p in batch.problems]
    teacher_batch = pack(batch.problems, [Sample(p, s.token_ids, s.text, s.finish_reason, s.logprobs)
                                          for p, s in zip(prompts, batch.samples)], pad_id, device)
    logp = teacher.token_logprobs(teacher_batch.input_ids, teacher_batch.attention_mask,
                                  start=teacher_batch.prompt_width)
    return logp.to(device)
