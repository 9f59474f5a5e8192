"""Rank statistics of the signal probe (float64, numpy): AUC with ties, AUC within groups (right vs wrong
rollouts of one prompt), and percentile intervals from resampling groups with replacement, for one score or
the paired difference of two on the same units."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _labels(labels: Sequence[Any]) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype != bool and not np.isin(y, (0, 1)).all():  # a 2 would silently count as right
        raise ValueError(f"labels must be bool or 0/1, got {sorted(set(y.tolist()) - {0, 1})[:3]}")
    return y.astype(bool)


def _scores(scores: Sequence[float], units: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != units:
        raise ValueError(f"{name}: {len(s)} values for {units} labels")
    if np.isnan(s).any():  # NaN has no rank: a missing score is left out by the caller, not ranked
        raise ValueError(f"{name}: {int(np.isnan(s).sum())} NaN (first at unit {int(np.flatnonzero(np.isnan(s))[0])})")
    return s


def _groups(groups: Sequence[Any], units: int) -> np.ndarray:
    g = np.asarray(groups)
    if len(g) != units:
        raise ValueError(f"groups: {len(g)} values for {units} labels")
    return g


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _u_pairs(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(Mann-Whitney U of the positives: pairs where a positive outscores a negative, ties counting 1/2; pairs)."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0, 0.0
    r = _ranks(scores.astype(np.float64))
    return float(r[pos].sum() - n_pos * (n_pos + 1) / 2), float(n_pos * n_neg)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative) + P(tie)/2; NaN without both classes."""
    y = _labels(labels)
    return _auc(_scores(scores, len(y)), y)


def _auc(s: np.ndarray, y: np.ndarray) -> float:
    """`auc` on arrays already checked (the bootstrap's replicates of checked inputs)."""
    u, pairs = _u_pairs(s, y)
    return u / pairs if pairs else math.nan


def within_auc(scores: Sequence[float], labels: Sequence[bool], groups: Sequence[Any]) -> tuple[float, int]:
    """(AUC over positive-negative pairs of the same group only, number of groups with both classes): every
    such pair weighs the same, so a prompt with 2 right and 2 wrong rollouts counts 4 pairs."""
    y = _labels(labels)
    return _within_auc(_scores(scores, len(y)), y, _groups(groups, len(y)))


def _within_auc(s: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[float, int]:
    """`within_auc` on arrays already checked."""
    u_sum = pair_sum = 0.0
    both = 0
    for key in np.unique(g):
        sel = g == key
        u, pairs = _u_pairs(s[sel], y[sel])
        if pairs:
            both += 1
            u_sum, pair_sum = u_sum + u, pair_sum + pairs
    return (u_sum / pair_sum if pair_sum else math.nan), both


def bootstrap(stat: Callable[[np.ndarray, np.ndarray], float], groups: Sequence[Any], *, reps: int = 1000,
              seed: int = 0) -> np.ndarray:
    """`reps` values of `stat(index, copy)`, each on a resample of the groups (prompts) with replacement: `index`
    are the units of the drawn groups and `copy[j]` the draw unit `index[j]` came with, so a prompt drawn twice
    is two groups (a within-prompt statistic never pairs its two copies). NaN replicates (a resample without
    both classes) are dropped: the callers report how many were kept."""
    g = np.asarray(groups)
    keys = np.unique(g)
    members = [np.flatnonzero(g == k) for k in keys]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(reps):
        drawn = rng.integers(0, len(keys), len(keys))
        index = np.concatenate([members[d] for d in drawn])
        copy = np.concatenate([np.full(len(members[d]), j) for j, d in enumerate(drawn)])
        out.append(stat(index, copy))
    values = np.asarray(out, dtype=np.float64)
    return values[~np.isnan(values)]


def interval(values: np.ndarray) -> list[float]:
    """95% percentile interval, [NaN, NaN] without replicates."""
    if len(values) == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_with_interval(values, groups, *, reps: int, seed: int = 0) -> dict[str, Any]:
    """Mean of per-unit values (e.g. 1, 1/2, 0 for won, tied, lost pairs) with its 95% group-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    g = _groups(groups, len(v))
    reps_ = bootstrap(lambda i, _c: float(v[i].mean()) if len(i) else math.nan, g, reps=reps, seed=seed)
    return {"mean": float(v.mean()) if len(v) else math.nan, "ci": interval(reps_), "replicates": len(reps_)}


def auc_with_interval(scores, labels, groups, *, within: bool, reps: int, seed: int = 0) -> dict[str, Any]:
    y = _labels(labels)
    s, g = _scores(scores, len(y)), _groups(groups, len(y))
    if within:
        value, both = _within_auc(s, y, g)
        reps_ = bootstrap(lambda i, c: _within_auc(s[i], y[i], c)[0], g, reps=reps, seed=seed)
        return {"auc": value, "ci": interval(reps_), "prompts_with_both": both, "replicates": len(reps_)}
    reps_ = bootstrap(lambda i, _c: _auc(s[i], y[i]), g, reps=reps, seed=seed)
    return {"auc": _auc(s, y), "ci": interval(reps_), "replicates": len(reps_)}


def paired_difference(a, b, labels, groups, *, within: bool, reps: int, seed: int = 0) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same units, and its 95% interval from one prompt resample for both; `units` are the
    rollouts compared, and within prompt `prompts_with_both` the prompts that contribute pairs."""
    y = _labels(labels)
    a, b, g = _scores(a, len(y), "a"), _scores(b, len(y), "b"), _groups(groups, len(y))

    def diff(i: np.ndarray, copy: np.ndarray) -> float:
        if within:
            return _within_auc(a[i], y[i], copy)[0] - _within_auc(b[i], y[i], copy)[0]
        return _auc(a[i], y[i]) - _auc(b[i], y[i])

    full = diff(np.arange(len(y)), g)
    reps_ = bootstrap(diff, g, reps=reps, seed=seed)
    out = {"diff": full, "ci": interval(reps_), "units": len(y), "replicates": len(reps_)}
    if within:
        out["prompts_with_both"] = _within_auc(a, y, g)[1]
    return out
