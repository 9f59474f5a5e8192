"""`audit.selection=random`, the paper's "without entropy selection" ablation (omniopd/audit/forks.py).

Hand-enumerated placements, a uniformity check against the exact count comb(L - kC + k, k), seeds that do not
depend on ranks, the count taken from entropy selection row by row, and real forks of the bundled student.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from omniopd.audit import build_forks, pick_anchors, random_anchors, sample_seeds, select_anchors
from omniopd.config import AuditConfig


def _placements(length: int, chunk_len: int, k: int) -> set[tuple[int, ...]]:
    """Every set of k non-overlapping chunks inside the response, by brute force."""
    return {starts for starts in itertools.combinations(range(length - chunk_len + 1), k)
            if all(b - a >= chunk_len for a, b in zip(starts, starts[1:]))}


def _draw(length: int, chunk_len: int, k: int, seeds: range, width: int | None = None) -> list[tuple[int, ...]]:
    out = random_anchors([k] * len(seeds), [length] * len(seeds), chunk_len, list(seeds), width or k)
    return [tuple(int(a) for a in row if a >= 0) for row in out]


def test_hand_enumerated_case():
    # L=5, C=2, k=2: starts (0,2), (0,3), (1,3) - and nothing else
    assert _placements(5, 2, 2) == {(0, 2), (0, 3), (1, 3)}
    drawn = Counter(_draw(5, 2, 2, range(3000)))
    assert set(drawn) == {(0, 2), (0, 3), (1, 3)}
    assert all(abs(c - 1000) < 5 * math.sqrt(3000 * (1 / 3) * (2 / 3)) for c in drawn.values())


def test_exact_fit_none_and_padding():
    assert _draw(9, 3, 3, range(20)) == [(0, 3, 6)] * 20  # k·C = L: one placement
    out = random_anchors([0, 1, 2], [3, 4, 9], 4, [1, 2, 3], 3)
    assert out[0].tolist() == [-1, -1, -1]  # none asked: none placed (a response shorter than C)
    assert out[1].tolist() == [0, -1, -1]  # one chunk of 4 in 4 tokens
    assert out.dtype == torch.int64 and out[2, 2] == -1 and out[2, 1] - out[2, 0] >= 4 and out[2, 1] <= 5
    with pytest.raises(ValueError, match="row 0: 3 chunks of 4 do not fit a response of 11"):
        random_anchors([3], [11], 4, [0], 3)
    with pytest.raises(ValueError, match="one entry per row"):
        random_anchors([1, 1], [5], 2, [0, 1], 1)


def test_uniform_over_all_placements():
    length, c, k, draws = 10, 3, 2, 15000
    every = _placements(length, c, k)
    assert len(every) == math.comb(length - k * c + k, k) == 15
    drawn = Counter(_draw(length, c, k, range(draws)))
    assert set(drawn) == every
    p = 1 / len(every)
    sd = math.sqrt(draws * p * (1 - p))
    assert all(abs(n - draws * p) < 5 * sd for n in drawn.values()), drawn
    # chi-square with 14 degrees of freedom: 99.9% quantile 36.1
    assert sum((n - draws * p) ** 2 / (draws * p) for n in drawn.values()) < 36.1


def test_seeds_per_step_problem_sample_not_rank():
    ids = ["p1", "p1", "p2", "p2"]  # two problems, two samples each, as the trainer's rows come
    whole = sample_seeds(0, 5, ids)
    assert whole == sample_seeds(0, 5, ids[:2]) + sample_seeds(0, 5, ids[2:])  # 1 rank == 2 ranks
    assert len(set(whole)) == 4  # each sample its own
    assert sample_seeds(0, 6, ids) != whole and sample_seeds(1, 5, ids) != whole
    # a row's placement depends only on its own seed, not on the rest of the batch
    both = random_anchors([2, 2], [20, 20], 3, whole[:2], 2)
    alone = random_anchors([2], [20], 3, whole[1:2], 2)
    assert torch.equal(both[1], alone[0])


def test_pick_anchors_random_places_as_many_as_entropy_per_row():
    torch.manual_seed(0)
    entropy = torch.rand(4, 12)
    mask = torch.arange(12) < torch.tensor([12, 7, 2, 9])[:, None]  # row 2 is shorter than C
    entropy[3] = torch.linspace(0, 1, 12)  # with a floor, row 3 has room for 2 but only 1 passes it
    cfg = AuditConfig(num_chunks=3, chunk_len=3, min_entropy=0.75, selection="entropy")
    by_entropy = pick_anchors(entropy, mask, 3, cfg, [0, 1, 2, 3])
    assert torch.equal(by_entropy, select_anchors(entropy, mask, 3, 3, 0.75))
    cfg.selection = "random"
    counts = (by_entropy >= 0).sum(1)
    for seeds in ([0, 1, 2, 3], [4, 5, 6, 7]):
        rand = pick_anchors(entropy, mask, 3, cfg, seeds)
        assert rand.shape == by_entropy.shape and torch.equal((rand >= 0).sum(1), counts)
        for row, length in zip(rand.tolist(), [12, 7, 2, 9]):
            starts = [a for a in row if a >= 0]
            assert starts == sorted(starts) and all(b - a >= 3 for a, b in zip(starts, starts[1:]))
            assert all(0 <= a <= length - 3 for a in starts)
    assert counts.tolist()[2] == 0
    with pytest.raises(ValueError, match="contiguous"):
        pick_anchors(entropy, mask & (torch.arange(12) != 1), 3, cfg, [0, 1, 2, 3])


def test_random_selection_on_real_forks_of_the_bundled_student():
    """Entropy from the bundled student on its own text; random placement keeps each row's count, stays inside
    the response, and its forks decode to the response's own text."""
    from omniopd import assets, losses

    model, tok = assets.load_student("smollm2-135m")
    texts = ["To add 17 and 25, first add the tens: 10 + 20 = 30. Then the ones: 7 + 5 = 12. So 30 + 12 = 42.",
             "The answer is 9.", "We need 3 * 4 = 12 apples, and 12 - 5 = 7 remain after lunch, so 7."]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]
    with torch.no_grad():  # response-aligned: column t is the distribution that produced token t (t >= 1)
        logits = model(ids, attention_mask=mask.long()).logits[:, :-1].float()
    entropy, _ = losses.entropy_logprob(logits, ids[:, 1:], mask[:, 1:])
    mask = mask[:, 1:]
    cfg = AuditConfig(num_chunks=4, chunk_len=6, selection="random")
    by_entropy = select_anchors(entropy, mask, 4, 6)
    seeds = sample_seeds(0, 0, ["a", "b", "c"])
    rand = pick_anchors(entropy, mask, 4, cfg, seeds)
    assert torch.equal((rand >= 0).sum(1), (by_entropy >= 0).sum(1))
    assert int(mask[1].sum()) < 6 and (by_entropy[1] >= 0).sum() == 0  # shorter than C: no chunk
    assert not torch.equal(rand, by_entropy)  # placed elsewhere than the peaks (fixed seeds: deterministic)
    responses = [r[1:] for r in rows]
    for fork in build_forks(responses, rand, tok, 6):
        length = int(mask[fork.seq].sum())
        assert 0 <= fork.anchor <= length - 6
        assert tok.decode(responses[fork.seq][fork.anchor:fork.anchor + 6]) == fork.chunk_text
    assert torch.equal(pick_anchors(entropy, mask, 4, cfg, seeds), rand)  # same seeds, same placement
