"""Rank statistics of the signal probe (float64, numpy): AUC with ties, AUC within groups (right vs wrong
rollouts of one prompt), and percentile intervals from resampling groups with replacement, for one score or
the paired difference of two on the same units."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


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
    u, pairs = _u_pairs(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool))
    return u / pairs if pairs else math.nan


def within_auc(scores: Sequence[float], labels: Sequence[bool], groups: Sequence[Any]) -> tuple[float, int]:
    """(AUC over positive-negative pairs of the same group only, number of groups with both classes): every
    such pair weighs the same, so a prompt with 2 right and 2 wrong rollouts counts 4 pairs."""
    s, y, g = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool), np.asarray(groups)
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
    is two groups (a within-prompt statistic never pairs its two copies). NaN replicates are dropped."""
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


def auc_with_interval(scores, labels, groups, *, within: bool, reps: int, seed: int = 0) -> dict[str, Any]:
    s, y, g = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool), np.asarray(groups)
    if within:
        value, both = within_auc(s, y, g)
        reps_ = bootstrap(lambda i, c: within_auc(s[i], y[i], c)[0], g, reps=reps, seed=seed)
        return {"auc": value, "ci": interval(reps_), "prompts_with_both": both}
    reps_ = bootstrap(lambda i, _c: auc(s[i], y[i]), g, reps=reps, seed=seed)
    return {"auc": auc(s, y), "ci": interval(reps_)}


def paired_difference(a, b, labels, groups, *, within: bool, reps: int, seed: int = 0) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same units, and its 95% interval from one prompt resample for both."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    y, g = np.asarray(labels, dtype=bool), np.asarray(groups)

    def diff(i: np.ndarray, copy: np.ndarray) -> float:
        if within:
            return within_auc(a[i], y[i], copy)[0] - within_auc(b[i], y[i], copy)[0]
        return auc(a[i], y[i]) - auc(b[i], y[i])

    full = diff(np.arange(len(y)), g)
    return {"diff": full, "ci": interval(bootstrap(diff, g, reps=reps, seed=seed)), "units": len(y)}
