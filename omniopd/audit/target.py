"""The Dirichlet-Multinomial acceptance target π̂ (DESIGN §1 step 5) and the scoring of a step's forks.

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
    """Kept forks and their targets; `pi_hat[i]` belongs to `forks[i]`. Everything is detached."""

    forks: list[Fork]
    chunk_len: int
    phi: torch.Tensor  # [K, N]
    k_sem: torch.Tensor  # [K]
    pi_bar: torch.Tensor  # [K]
    pi_hat: torch.Tensor  # [K]
    dropped: list[Fork] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def score_forks(forks: Sequence[Fork], teacher_texts: Sequence[Sequence[str | None] | None],
                old_logprobs: torch.Tensor, similarity: Callable[..., torch.Tensor], *, n: int, alpha: float,
                chunk_len: int, entropy: torch.Tensor | None = None,
                response_mask: torch.Tensor | None = None) -> AuditResult:
    """Score every fork whose teacher returned N usable texts; drop and count the others.

    `teacher_texts[i]` belongs to `forks[i]`: a list of texts, None entries for failed samples, or None
    for a failed request. Fewer than `n` str entries -> dropped; more than `n` is a caller error.
    `old_logprobs[B, T]` are the rollout policy's log-probs of the response tokens (response-aligned,
    like the anchors): π̄ = exp(mean_{j<C} old_logprobs[seq, anchor + j]). Passing `entropy[B, T]` and
    `response_mask[B, T]` adds the anchor-vs-overall entropy metrics.
    """
    if len(forks) != len(teacher_texts):
        raise ValueError(f"{len(forks)} forks but {len(teacher_texts)} teacher results")
    if not isinstance(old_logprobs, torch.Tensor) or old_logprobs.dim() != 2:
        raise ValueError(f"old_logprobs must be a [B, T] tensor, got {getattr(old_logprobs, 'shape', None)}")
    kept, dropped, texts = [], [], []
    for i, (fork, result) in enumerate(zip(forks, teacher_texts)):
        if isinstance(result, str):
            raise TypeError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}): teacher result is one str, "
                            "expected a list of N texts")
        usable = [] if result is None else [r for r in result if isinstance(r, str)]
        if len(usable) > n:
            raise ValueError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}): teacher returned "
                             f"{len(usable)} texts, more than N={n}")
        if not 0 <= fork.seq < old_logprobs.shape[0] or not 0 <= fork.anchor <= old_logprobs.shape[1] - chunk_len:
            raise ValueError(f"fork {i} (sequence {fork.seq}, anchor {fork.anchor}, C={chunk_len}) lies outside "
                             f"old_logprobs of shape {tuple(old_logprobs.shape)}")
        complete = len(usable) == n
        (kept if complete else dropped).append(fork)
        if complete:
            texts.append(usable)

    if kept:
        phi = similarity([f.chunk_text for f in kept], texts).to(torch.float64)
        if phi.shape != (len(kept), n):
            raise ValueError(f"similarity returned shape {tuple(phi.shape)}, expected ({len(kept)}, {n})")
        rows = torch.tensor([f.seq for f in kept], device=old_logprobs.device)
        cols = torch.tensor([f.anchor for f in kept], device=old_logprobs.device)[:, None] + \
            torch.arange(chunk_len, device=old_logprobs.device)
        pi_bar = old_logprobs.detach()[rows[:, None], cols].double().mean(dim=1).exp().cpu()
        k_sem = phi.sum(dim=1)
        for name, t, hi in (("phi", phi, 1.0), ("pi_bar", pi_bar, 1.0)):
            i = _first_bad(t, hi)
            if i is not None:
                f = kept[i // (t.numel() // len(kept))]
                raise ValueError(f"fork (sequence {f.seq}, anchor {f.anchor}): {name} must lie in [0, 1], got "
                                 f"{t.flatten()[i].item()!r}")
        pi_hat = acceptance_target(k_sem, pi_bar, n, alpha)
    else:
        phi = torch.zeros(0, n, dtype=torch.float64)
        k_sem = pi_bar = pi_hat = torch.zeros(0, dtype=torch.float64)
    result = AuditResult(forks=kept, chunk_len=chunk_len, phi=phi, k_sem=k_sem, pi_bar=pi_bar, pi_hat=pi_hat,
                         dropped=dropped)
    result.metrics = _metrics(result, entropy, response_mask)
    return result


def _stats(prefix: str, t: torch.Tensor) -> dict[str, float]:
    t = t.flatten().double()
    if t.numel() == 0:
        return {f"{prefix}_mean": math.nan, f"{prefix}_std": math.nan}
    return {f"{prefix}_mean": t.mean().item(), f"{prefix}_std": t.std(unbiased=False).item()}


def _metrics(r: AuditResult, entropy: torch.Tensor | None, response_mask: torch.Tensor | None) -> dict[str, float]:
    m = {"audit/chunks_audited": float(len(r.forks)), "audit/chunks_dropped": float(len(r.dropped))}
    for name, t in (("phi", r.phi), ("k_sem", r.k_sem), ("pi_bar", r.pi_bar), ("pi_hat", r.pi_hat)):
        m.update(_stats(f"audit/{name}", t))
    if entropy is not None and response_mask is not None:
        entropy = entropy.detach().double()
        m["audit/entropy_overall_mean"] = entropy[response_mask.bool()].mean().item() \
            if response_mask.any() else math.nan
        forks = r.forks + r.dropped
        rows, cols = [f.seq for f in forks], [f.anchor for f in forks]
        m["audit/entropy_anchor_mean"] = entropy[rows, cols].mean().item() if forks else math.nan
    return m
