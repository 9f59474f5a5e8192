"""The audited loss of one omniopd step (docs/design.md §1 steps 5-6): a `Prepared` batch, the student's and
reference's heads and the teacher's answers in; loss and metrics out. Every step mode (synchronous, overlapped,
pipelined) ends here. Not imported by `omniopd.audit` itself: it depends on `omniopd.losses`, which depends on
the audit package."""

from __future__ import annotations

from collections.abc import Callable

import torch

from omniopd import losses
from omniopd.audit.target import score_forks
from omniopd.config import Config
from omniopd.pipeline import Prepared
from omniopd.rollout.teachers.base import TeacherResult
from omniopd.runlog import StepTimer, summed


def audited_loss(prepared: Prepared, head: losses.Head, ref: losses.Head, results: list[TeacherResult],
                 cfg: Config, similarity: Callable[..., torch.Tensor], timer: StepTimer, *,
                 ratio: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, dict[str, float]]:
    """Similarity and the Dirichlet-Multinomial target of every fork with N teacher texts (the others are dropped
    and counted), then the chunk-weighted policy gradient plus the KL anchor on every other token.

    `ratio`: the truncated importance ratio when the rollouts came from older weights; `backend`: the kernels'
    (`auto`: Triton on CUDA, whose summed loss computes its gradients inside the forward)."""
    batch = prepared.batch
    with timer("score"):
        audit = score_forks(prepared.anchors, prepared.forks, [r.texts for r in results], prepared.logprob, similarity,
                            n=cfg.audit.num_continuations, alpha=cfg.audit.alpha, chunk_len=cfg.audit.chunk_len,
                            entropy=prepared.entropy, response_mask=batch.response_mask)
    with timer("loss"):
        loss, metrics = losses.omniopd(head, ref, batch.tokens, batch.response_mask, audit, beta=cfg.objective.beta,
                                       normalizer=prepared.normalizer, ratio=ratio, target=cfg.objective.target,
                                       backend=backend)
    metrics["audit/num_chunks_m"] = float(prepared.num_chunks)
    metrics["teacher/failed_requests"] = summed(sum(not r.ok for r in results))
    return loss, metrics
