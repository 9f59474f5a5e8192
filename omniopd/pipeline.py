"""The machinery of the overlapped and pipelined step (issue 13); the trainer decides the order.

- `Prepared`: one step's rollouts after the entropy pass: its forks, the teacher job already in flight, and
  the trainer's log-probs at the weights that sampled it (the rollout policy of the importance ratio), tagged
  with that weight version. The synchronous step prepares with the gradient on and keeps that forward's head
  (no second student forward); the overlapped and pipelined steps prepare without and run it later.
- `Background`: one call on a thread, joined later (rollouts for step k+1 while step k trains).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from omniopd.audit import Fork
from omniopd.batch import Batch
from omniopd.losses import Head
from omniopd.rollout.teachers.base import TeacherJob

T = TypeVar("T")


@dataclass
class Prepared:
    """A batch ready for the loss but for the teacher's answers: the only input of the audited loss besides
    the forwards and the answers."""

    batch: Batch
    rewards: torch.Tensor  # [B]
    normalizer: float
    entropy: torch.Tensor  # [B, T] at `version`
    logprob: torch.Tensor  # [B, T] log π(y_t) at `version`: the rollout policy
    anchors: torch.Tensor  # [B, M]
    forks: list[Fork]
    num_chunks: int  # M at this step
    job: TeacherJob
    version: int  # optimizer steps the weights had taken when these rollouts were sampled
    head: Head | None = None  # the student's grad forward, when prepared with the gradient on (synchronous)
    seconds: dict[str, float] = field(default_factory=dict)  # phases spent producing it


class Background(Generic[T]):
    """Runs `fn()` on a daemon thread at once; `join()` returns its value (or raises its error) and the
    seconds it ran."""

    def __init__(self, fn: Callable[[], T], name: str):
        self._value: T | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        start = time.perf_counter()
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the joining thread
            self._error = e
        self.seconds = time.perf_counter() - start

    def wait(self) -> None:
        """Join without raising (clean-up after another error)."""
        self._thread.join()

    def join(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class StreamedScores:
    """φ of each fork computed as its teacher answer arrives (while later ones are still in flight); then used
    as `score_forks`' similarity, which asks for the φ of the kept forks in order."""

    def __init__(self, similarity: Callable[..., torch.Tensor], forks: list[Fork], n: int):
        self.similarity, self.forks, self.n = similarity, forks, n
        self.phi: dict[int, torch.Tensor] = {}
        self.seconds = 0.0  # spent computing φ

    def collect(self, job: TeacherJob) -> list:
        """Waits for every answer of `job`, scoring each on arrival; returns the job's results in order."""
        for i, result in job.as_completed():
            texts = [t for t in result.texts or [] if isinstance(t, str)]
            if len(texts) == self.n:
                start = time.perf_counter()
                self.phi[i] = self.similarity([self.forks[i].chunk_text], [texts])[0]
                self.seconds += time.perf_counter() - start
        return job.results()

    def __call__(self, chunks: list[str], texts: list[list[str]]) -> torch.Tensor:
        kept = sorted(self.phi)
        if [self.forks[i].chunk_text for i in kept] != list(chunks):  # not what was streamed: score it all now
            return self.similarity(chunks, texts)
        return torch.stack([self.phi[i] for i in kept]) if kept else torch.zeros(0, self.n)
