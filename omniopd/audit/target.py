"""The Dirichlet-Multinomial acceptance target π̂ (docs/design.md §1 step 5) and the scoring of a step's forks.

`score_forks` is the one call between the teacher and the loss: it drops forks whose teacher returned
fewer than N usable texts (counted, never scored as disagreement), scores the rest with one batched
phi call, and returns π̂ per kept fork plus the step's audit metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from omniopd.audit.requests import Fork
from omniopd.runlog import summed

_EPS = 1e-6  # float32 round-off allowed outside [0, 1] before a value counts as out of range


def acceptance_target(k_sem: torch.Tensor, pi_bar: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """π̂ = (k_sem + α·π̄) / (N + α), detached; raises if an input or the result leaves its range.

    `k_sem` in [0, N] (sum of N similarities), `pi_bar` in [0, 1] (student's geometric-mean chunk
    probability), `n` >= 1 teacher votes, `alpha` >= 0 pseudo-votes centred on the student's belief.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (teacher continuations per fork) must be an int >= 1, got {n!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    k_sem, pi_bar = torch.as_tensor(k_sem).detach(), torch.as_tensor(pi_bar).detach()
    if k_sem.shape != pi_bar.shape:
        raise ValueError(f"k_sem {tuple(k_sem.shape)} and pi_bar {tuple(pi_bar.shape)} must have one shape")
    _check_range("k_sem", k_sem, n)
    _check_range("pi_bar", pi_bar, 1.0)
    pi_hat = (k_sem + alpha * pi_bar) / (n + alpha)
    _check_range("pi_hat", pi_hat, 1.0)
    return pi_hat.clamp(0.0, 1.0)


def _first_bad(t: torch.Tensor, hi: float) -> int | None:
    """Flat index of the first element outside [0, hi] (NaN included), or None."""
    bad = ~((t >= -_EPS * max(hi, 1)) & (t <= hi * (1 + _EPS)))  # NaN fails both comparisons
    return int(bad.flatten().nonzero()[0]) if bad.any() else None


def _check_range(name: str, t: torch.Tensor, hi: float) -> None:
    i = _first_bad(t, hi)
    if i is not None:
        raise ValueError(f"{name} must lie in [0, {hi}]: element {i} is {t.flatten()[i].item()!r}")


@dataclass
class AuditResult:
    """The audit as `[B, M]` tensors, what the loss reads: slot `m` of row `b` is the m-th anchor of sequence
    `b` (ascending, as `select_forks` returns them). Everything is detached, float64."""

    anchors: torch.Tensor  # [B, M] int64, -1: no fork in this slot
    kept: torch.Tensor  # [B, M] bool: scored (the teacher returned N texts); False also where no fork
    k_sem: torch.Tensor  # [B, M], 0 outside kept
    pi_bar: torch.Tensor  # [B, M], 0 where no fork
    pi_hat: torch.Tensor  # [B, M], 0 outside kept
    chunk_len: int
    phi: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))  # [K, N] kept forks
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def given(cls, chunks: Sequence[tuple[int, int, float]], batch_size: int, chunk_len: int) -> AuditResult:
        """Kept chunks `(sequence, anchor, π̂)` with their targets given (tests, benchmarks)."""
        per_row: list[list[tuple[int, float]]] = [[] for _ in range(batch_size)]
        for seq, anchor, pi_hat in chunks:
            per_row[seq].append((anchor, pi_hat))
        m = max((len(r) for r in per_row), default=0)
        anchors = torch.full((batch_size, m), -1, dtype=torch.int64)
        pi_hat = torch.zeros(batch_size, m, dtype=torch.float64)
        for b, row in enumerate(per_row):
            for j, (anchor, value) in enumerate(sorted(row)):
                anchors[b, j], pi_hat[b, j] = anchor, value
        return cls(anchors, anchors >= 0, torch.zeros_like(pi_hat), torch.zeros_like(pi_hat), pi_hat, chunk_len)

    def kept_chunks(self) -> list[tuple[int, int]]:
        """`(sequence, anchor)` of every kept slot, in row-major order."""
        return [(b, int(self.anchors[b, m])) for b, m in self.kept.nonzero().tolist()]


def score_forks(anchors: torch.Tensor, forks: Sequence[Fork], teacher_texts: Sequence[Sequence[str | None] | None],
                old_logprobs: torch.Tensor, similarity: Callable[..., torch.Tensor], *, n: int, alpha: float,
                chunk_len: int, entropy: torch.Tensor | None = None,
                response_mask: torch.Tensor | None = None) -> AuditResult:
    """Score every fork whose teacher returned N usable texts; drop and count the others.

    `anchors[B, M]` are `select_forks`' anchors and `forks` the `build_forks` of them (one per anchor >= 0,
    row-major: the texts the teacher saw); `teacher_texts[i]` belongs to `forks[i]`: a list of texts, None
    entries for failed samples, or None for a failed request. Fewer than `n` str entries -> dropped; more
    than `n` is a caller error. `old_logprobs[B, T]` are the rollout policy's log-probs of the response
    tokens (response-aligned, like the anchors): π̄ = exp(mean_{j<C} old_logprobs[seq, anchor + j]).
    Passing `entropy[B, T]` and `response_mask[B, T]` adds the anchor-vs-overall entropy metrics.
    """
    if not isinstance(old_logprobs, torch.Tensor) or old_logprobs.dim() != 2:
        raise ValueError(f"old_logprobs must be a [B, T] tensor, got {getattr(old_logprobs, 'shape', None)}")
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2 or anchors.shape[0] != old_logprobs.shape[0]:
        raise ValueError(f"anchors must be a [B={old_logprobs.shape[0]}, M] tensor, got "
                         f"{getattr(anchors, 'shape', type(anchors))}")
    if len(forks) != len(teacher_texts):
        raise ValueError(f"{len(forks)} forks but {len(teacher_texts)} teacher results")
    anchors = anchors.detach().to(old_logprobs.device).long()
    slots = (anchors >= 0).nonzero()  # [F, 2] row-major: fork i sits in slot slots[i]
    expected = [(b, int(anchors[b, m])) for b, m in slots.tolist()]
    if [(f.seq, f.anchor) for f in forks] != expected:
        raise ValueError(f"forks {[(f.seq, f.anchor) for f in forks]} do not match the anchors {expected} "
                         "(one fork per anchor >= 0, row-major)")
    b_size, t_size = old_logprobs.shape
    kept_list, texts = [], []
    for i, (fork, result) in enumerate(zip(forks, teacher_texts)):
        if isinstance(result, str):
            raise TypeError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}): teacher result is one str, "
                            "expected a list of N texts")
        usable = [] if result is None else [r for r in result if isinstance(r, str)]
        if len(usable) > n:
            raise ValueError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}): teacher returned "
                             f"{len(usable)} texts, more than N={n}")
        if not 0 <= fork.anchor <= t_size - chunk_len:
            raise ValueError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}, C={chunk_len}) lies outside "
                             f"old_logprobs of shape {tuple(old_logprobs.shape)}")
        kept_list.append(len(usable) == n)
        if kept_list[-1]:
            texts.append(usable)

    # π̄ of every fork in one gather: exp(mean log-prob of its C tokens).
    cols = anchors.clamp(min=0)[..., None] + torch.arange(chunk_len, device=anchors.device)  # [B, M, C]
    has_fork = anchors >= 0
    pi_bar = old_logprobs.detach().double().gather(1, cols.clamp(max=t_size - 1).reshape(b_size, -1))
    pi_bar = torch.where(has_fork, pi_bar.reshape(cols.shape).mean(-1).exp(), 0.0).cpu()
    kept = torch.zeros(anchors.shape, dtype=torch.bool)
    kept[has_fork.cpu()] = torch.tensor(kept_list, dtype=torch.bool)
    i = _first_bad(pi_bar[has_fork.cpu()], 1.0)
    if i is not None:
        f = forks[i]
        raise ValueError(f"fork (sequence {f.seq}, anchor {f.anchor}): pi_bar must lie in [0, 1], got "
                         f"{pi_bar[has_fork.cpu()][i].item()!r}")
    k_sem = torch.zeros(anchors.shape, dtype=torch.float64)
    pi_hat = torch.zeros(anchors.shape, dtype=torch.float64)
    phi = torch.zeros(0, n, dtype=torch.float64)
    if texts:
        kept_forks = [f for f, k in zip(forks, kept_list) if k]
        phi = similarity([f.chunk_text for f in kept_forks], texts).to(torch.float64)
        if phi.shape != (len(kept_forks), n):
            raise ValueError(f"similarity returned shape {tuple(phi.shape)}, expected ({len(kept_forks)}, {n})")
        i = _first_bad(phi, 1.0)
        if i is not None:
            f = kept_forks[i // n]
            raise ValueError(f"fork (sequence {f.seq}, anchor {f.anchor}): phi must lie in [0, 1], got "
                             f"{phi.flatten()[i].item()!r}")
        k_sem[kept] = phi.sum(dim=1)
        pi_hat[kept] = acceptance_target(k_sem[kept], pi_bar[kept], n, alpha)
    result = AuditResult(anchors=anchors.cpu(), kept=kept, k_sem=k_sem, pi_bar=pi_bar, pi_hat=pi_hat,
                         chunk_len=chunk_len, phi=phi)
    result.metrics = _metrics(result, entropy, response_mask)
    return result


def _stats(prefix: str, t: torch.Tensor) -> dict[str, float]:
    t = t.flatten().double()
    if t.numel() == 0:
        return {f"{prefix}_mean": math.nan, f"{prefix}_std": math.nan}
    return {f"{prefix}_mean": t.mean().item(), f"{prefix}_std": t.std(unbiased=False).item()}


def _metrics(r: AuditResult, entropy: torch.Tensor | None, response_mask: torch.Tensor | None) -> dict[str, float]:
    has_fork = r.anchors >= 0
    # A response with room for fewer than M chunks gets as many as fit (placed); of those, the ones the teacher
    # answered in full are scored (audited). "Without chunks" means no room: nothing placed.
    placed, scored = has_fork.sum(1).double(), r.kept.sum(1).double()
    some = placed.numel() > 0
    m = {"audit/chunks_audited": summed(r.kept.sum().item()),  # counts: ranks add them
         "audit/chunks_dropped": summed((has_fork & ~r.kept).sum().item()),
         # per-rank means over equally many responses: their mean over ranks is the step's
         "audit/chunks_per_response_mean": scored.mean().item() if some else math.nan,
         "audit/chunks_placed_per_response_mean": placed.mean().item() if some else math.nan,
         "audit/responses_without_chunks_frac": (placed == 0).double().mean().item() if some else math.nan}
    for name, t in (("phi", r.phi), ("k_sem", r.k_sem[r.kept]), ("pi_bar", r.pi_bar[r.kept]),
                    ("pi_hat", r.pi_hat[r.kept])):
        m.update(_stats(f"audit/{name}", t))
    if entropy is not None and response_mask is not None:
        entropy = entropy.detach().double().cpu()
        m["audit/entropy_overall_mean"] = entropy[response_mask.bool().cpu()].mean().item() \
            if response_mask.any() else math.nan
        at_anchor = entropy.gather(1, r.anchors.clamp(min=0))[has_fork]
        m["audit/entropy_anchor_mean"] = at_anchor.mean().item() if at_anchor.numel() else math.nan
    return m
