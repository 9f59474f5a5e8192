"""A step's forks and what the teacher is asked about them: the one place both are decided (the synchronous,
overlapped and pipelined steps all go through `pick_forks` then `fork_requests`)."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import torch

from omniopd.audit.forks import num_chunks_at, pick_anchors, sample_seeds
from omniopd.audit.requests import Decoder, Fork, build_forks
from omniopd.config import Config
from omniopd.data import Problem, teacher_messages
from omniopd.rollout.teachers.base import TeacherRequest


def pick_forks(entropy: torch.Tensor, response_mask: torch.Tensor, responses: Sequence[Sequence[int]],
               problem_ids: Sequence[Hashable], tokenizer: Decoder, step: int,
               cfg: Config) -> tuple[torch.Tensor, list[Fork], int]:
    """`(anchors[B, M], forks, M)` for training step `step`: up to M non-overlapping chunks per response (M from
    `audit.schedule`; placed at peak entropy or, with `audit.selection=random`, uniformly at random, seeded per
    (run seed, step, problem, sample)), each with the response text before it."""
    audit = cfg.audit
    m = num_chunks_at(step, audit)
    anchors = pick_anchors(entropy, response_mask, m, audit, sample_seeds(cfg.train.seed, step, problem_ids))
    return anchors, build_forks(responses, anchors.cpu(), tokenizer, audit.chunk_len), m


def fork_requests(forks: list[Fork], problems: list[Problem], cfg: Config, step: int,
                  rank: int) -> list[TeacherRequest]:
    """One teacher request per fork: N continuations of the response text before the chunk."""
    # The step is in the seed (and so in the cache key): a prefix seen again, e.g. every anchor-0 fork's
    # prompt-only prefix, gets fresh votes each step; still deterministic, so a resume reproduces it.
    return [TeacherRequest(
        messages=teacher_messages(problems[f.seq], cfg.data.system_prompt, cfg.teacher.hint),
        prefix=f.prefix_text, n=cfg.audit.num_continuations, max_tokens=2 * cfg.audit.chunk_len,
        temperature=cfg.teacher.temperature, seed=stable_seed(cfg.train.seed, step, problems[f.seq].id, f.prefix_text),
        key=f"step {step} rank {rank} seq {f.seq} anchor {f.anchor}") for f in forks]


def stable_seed(*parts: object) -> int:
    """A seed that depends only on `parts` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")
