"""experiments/signal_probe.py and its statistics (rank_stats.py) against brute-force references, its stage files,
a tiny real run."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("signal_probe", REPO / "experiments" / "signal_probe.py")
signal_probe = importlib.util.module_from_spec(_spec)
sys.modules["signal_probe"] = signal_probe
_spec.loader.exec_module(signal_probe)
import rank_stats  # noqa: E402  (experiments/, put on sys.path by signal_probe)


def brute_auc(scores, labels) -> float:
    """Every (positive, negative) pair, one by one: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return math.nan
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def brute_within(scores, labels, groups) -> float:
    wins = pairs = 0.0
    for i, j in itertools.product(range(len(scores)), repeat=2):
        if groups[i] == groups[j] and labels[i] and not labels[j]:
            pairs += 1
            wins += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return wins / pairs if pairs else math.nan


def test_auc_hand_cases():
    assert rank_stats.auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert rank_stats.auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert rank_stats.auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5  # ties count half
    # 3 positives x 2 negatives: (0.7 > 0.4, 0.7 > 0.2), (0.4 = 0.4 -> 1/2, 0.4 > 0.2), (0.1 < both) = 3.5 / 6
    assert rank_stats.auc([0.7, 0.4, 0.1, 0.4, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(3.5 / 6)
    assert math.isnan(rank_stats.auc([0.3, 0.4], [1, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_within_match_pairwise_counting(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
    labels = rng.random(n) < 0.4
    groups = rng.integers(0, 7, n)
    assert rank_stats.auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12, nan_ok=True)
    value, both = rank_stats.within_auc(scores, labels, groups)
    assert value == pytest.approx(brute_within(scores, labels, groups), abs=1e-12, nan_ok=True)
    assert both == sum(len({bool(y) for y, g in zip(labels, groups) if g == k}) == 2 for k in set(groups))


def test_within_prompt_ignores_between_prompt_pairs():
    # Prompt 0 is easy (all high), prompt 1 hard (all low): pooled AUC rewards the prompt, within does not.
    scores = [0.9, 0.8, 0.2, 0.1]
    labels = [1, 0, 1, 0]
    groups = [0, 0, 1, 1]
    assert rank_stats.within_auc(scores, labels, groups) == (1.0, 2)
    assert rank_stats.auc(scores, labels) == pytest.approx(brute_auc(scores, labels))  # 3/4
    assert rank_stats.auc(scores, labels) == 0.75


def test_paired_bootstrap_matches_the_exact_resampling_distribution():
    # Three prompts: the bootstrap draws each of the 27 ordered triples with probability 1/27. The paired difference
    # on each draw by brute force; a prompt drawn twice is two copies, paired within each copy only.
    a = [0.9, 0.1, 0.6, 0.7, 0.2, 0.3, 0.4, 0.8]
    b = [0.2, 0.8, 0.5, 0.1, 0.6, 0.9, 0.35, 0.3]
    labels = [1, 0, 1, 1, 0, 0, 1, 1]
    groups = [0, 0, 1, 1, 1, 2, 2, 2]
    units = {0: [0, 1], 1: [2, 3, 4], 2: [5, 6, 7]}

    def exact(draw, within):
        idx = [i for d in draw for i in units[d]]
        copy = [c for c, d in enumerate(draw) for _ in units[d]]
        y = [labels[i] for i in idx]
        if within:
            return brute_within([a[i] for i in idx], y, copy) - brute_within([b[i] for i in idx], y, copy)
        return brute_auc([a[i] for i in idx], y) - brute_auc([b[i] for i in idx], y)

    for within in (False, True):
        res = rank_stats.paired_difference(a, b, labels, groups, within=within, reps=6000, seed=1)
        assert res["diff"] == pytest.approx(exact((0, 1, 2), within), abs=1e-12)
        expected: dict[float, float] = {}  # exact probability of each distinct value; NaN draws are dropped
        for d in itertools.product((0, 1, 2), repeat=3):
            v = exact(d, within)
            if not math.isnan(v):
                expected[round(v, 9)] = expected.get(round(v, 9), 0.0) + 1 / 27
        total = sum(expected.values())
        values = sorted(expected)
        cdf = np.cumsum([expected[k] / total for k in values])
        lo, hi = res["ci"]
        # the interval's ends are the exact distribution's 2.5% and 97.5% quantiles (up to sampling error)
        assert values[int(np.searchsorted(cdf, 0.015))] <= lo <= values[int(np.searchsorted(cdf, 0.035))]
        assert values[int(np.searchsorted(cdf, 0.965))] <= hi <= values[int(np.searchsorted(cdf, 0.985))]
        # and every replicate is one of the exact values, each about as often as its probability
        reps_ = rank_stats.bootstrap(
            lambda i, c, w=within: (rank_stats.within_auc(np.asarray(a)[i], np.asarray(labels)[i], c)[0]
                                    - rank_stats.within_auc(np.asarray(b)[i], np.asarray(labels)[i], c)[0])
            if w else rank_stats.auc(np.asarray(a)[i], np.asarray(labels)[i])
            - rank_stats.auc(np.asarray(b)[i], np.asarray(labels)[i]), groups, reps=6000, seed=1)
        seen = {k: float(np.mean(np.isclose(reps_, k, atol=1e-9))) for k in values}
        assert sum(seen.values()) == pytest.approx(1.0)
        for k in values:
            assert seen[k] == pytest.approx(expected[k] / total, abs=0.025)


def test_identical_configurations_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    s = rng.random(40)
    y = rng.random(40) < 0.5
    g = np.repeat(np.arange(10), 4)
    for within in (False, True):
        res = rank_stats.paired_difference(s, s, y, g, within=within, reps=200)
        assert res["diff"] == 0.0 and res["ci"] == [0.0, 0.0]


def test_stage_units_are_written_once_and_skipped_after(tmp_path):
    calls = []
    stages = signal_probe.Stages(tmp_path, log=lambda _: None)
    first = stages.unit("a", lambda: calls.append(1) or {"x": 1})
    again = signal_probe.Stages(tmp_path, log=lambda _: None).unit("a", lambda: calls.append(2) or {"x": 2})
    assert calls == [1] and first["x"] == again["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind
    stopping = signal_probe.Stages(tmp_path, stop_after=0, log=lambda _: None)
    assert stopping.unit("a", lambda: {"x": 3})["x"] == 1  # a finished unit is read, not counted
    with pytest.raises(signal_probe.StopAfter):
        stopping.unit("b", lambda: {"x": 4})
    assert not (tmp_path / "b.json").exists()


def test_a_continuations_file_with_failed_requests_is_computed_again(tmp_path):
    said: list[str] = []
    stages = signal_probe.Stages(tmp_path, log=said.append)
    failed = {"errors": [None, "teacher timed out", None]}
    assert signal_probe.failed_requests(failed) == "1 of 3 teacher requests failed"
    assert signal_probe.failed_requests({"errors": [None, None]}) is None
    stages.unit("continuations-x", lambda: failed, incomplete=signal_probe.failed_requests)
    stages.unit("scores-x-ned", lambda: {"from": "the failed continuations"})
    answered = {"errors": [None, None, None]}
    again = stages.unit("continuations-x", lambda: answered, incomplete=signal_probe.failed_requests,
                        derived=("scores-x-ned", "scores-x-cosine"))
    assert again["errors"] == answered["errors"] and any("1 of 3 teacher requests failed" in s for s in said)
    assert not (tmp_path / "scores-x-ned.json").exists()  # derived from the old file: gone, to be recomputed
    calls = []
    stages.unit("continuations-x", lambda: calls.append(1) or failed, incomplete=signal_probe.failed_requests)
    assert calls == []  # whole now: read, not recomputed


def test_a_failed_unit_leaves_no_file(tmp_path):
    def boom():
        raise RuntimeError("killed mid-unit")

    with pytest.raises(RuntimeError):
        signal_probe.Stages(tmp_path, log=lambda _: None).unit("c", boom)
    assert list(tmp_path.iterdir()) == []


def _stage_files(out: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("*.json")
            if not p.name.startswith(("report-", "summary"))}


def _report_core(out: Path) -> dict:
    rep = json.loads((out / "report-addition-C8-hinted.json").read_text())
    rep.pop("cost")
    return rep


def test_tiny_real_run_resumes_without_redoing_finished_units(tmp_path):
    """The bundled student and the hinted bundled teacher at tiny sizes (N=5, so N=4 is a real subset; random
    anchors too): stopped after two stage units, resumed, then its later units deleted and redone: same report,
    and finished files never rewritten."""
    out = tmp_path / "sig"
    args = ["--task", "addition", "--chunk", "8", "--teacher", "hinted", "--student", "smollm2-135m", "--smoke",
            "--n", "5", "--random-at", "8", "--phi", "ned", "rouge1", "--out", str(out)]
    assert signal_probe.main(args + ["--stop-after", "2"]) == 3
    early = _stage_files(out)
    assert sorted(early) == ["continuations-addition-C8-hinted.json", "rollouts-addition.json"]
    assert signal_probe.main(args) == 0
    done = _stage_files(out)
    assert {k: done[k] for k in early} == early  # not recomputed, not rewritten
    assert {"scores-addition-C8-hinted-ned.json", "scores-addition-C8-hinted-rouge1.json",
            "teacher-logprobs-addition-hinted.json", "contrast-addition-C8-hinted.json"} <= set(done)

    roll = json.loads((out / "rollouts-addition.json").read_text())
    assert len(roll["rollouts"]) == 4 and {r["prompt"] for r in roll["rollouts"]} == {0, 1}
    assert roll["student_build"] == "smollm2-135m"
    assert all(len(r["entropy"]) == len(r["logprob"]) == len(r["token_ids"]) for r in roll["rollouts"])
    cont = json.loads((out / "continuations-addition-C8-hinted.json").read_text())
    assert cont["forks"] and all(len(t) == 5 for t in cont["texts"])  # N=5 each
    assert cont["teacher_build"] == "smollm2-135m"
    assert cont["completion_tokens"] > 0 and not any(cont["errors"])  # no fork lost to a deadline
    rep = _report_core(out)
    assert rep["fork_errors"] == [] and rep["rollouts_scored"] == len({f["seq"] for f in cont["forks"]})
    assert set(rep["configs"]) == {"ned/N5", "ned/N4", "rouge1/N5", "rouge1/N4"}
    for name in rep["configs"]:
        c = rep["configs"][name]
        assert c["chunks"] == len(cont["forks"])
        assert 0 < c["pi_hat_spread"]["min"] <= c["pi_hat_spread"]["max"] < 1  # α=1: π̂ ∈ (0, 1)
        for score in ("pi_hat", "k_over_n", "pi_bar", "opd"):
            assert c["auc"][score]["rollout"]["units"] == sum(v is not None for v in
                                                              rep["per_rollout"][f"{name}/{score}"])
    assert rep["student_build"] == rep["teacher_build"] == "smollm2-135m"
    md = (out / "report-addition-C8-hinted.md").read_text()
    assert md.startswith("# Signal probe") and "Teacher `smollm2-135m` (build `smollm2-135m`, hint solution)" in md
    assert (out / "summary.md").is_file()
    random = json.loads((out / "report-addition-C8-hinted-random.json").read_text())
    assert random["selection"] == "random" and random["forks_complete"] == random["forks"] > 0
    assert "ned/N4" in random["configs"] and "contrast" not in random["configs"]["ned/N4"]  # contrast: entropy only
    summary = json.loads((out / "summary.json").read_text())
    diff = summary["across"]["addition-C8-hinted-random - addition-C8-hinted"]
    assert 0 < diff["pooled"]["units"] <= 4 and "prompts_with_both" in diff["within"]

    # Delete everything after the two first units and redo it: the same numbers, the early files untouched.
    for p in out.glob("*.json"):
        if p.name not in early:
            p.unlink()
    assert signal_probe.main(args) == 0
    assert {k: v for k, v in _stage_files(out).items() if k in early} == early
    assert _report_core(out) == rep
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert os.path.getsize(out / "teacher_cache.sqlite") > 0

    # Stopped at every stage boundary in turn (one unit per run, the reply cache kept): the same report.
    for path in out.glob("*.json"):
        if path.name not in early:
            path.unlink()
    runs = 0
    while signal_probe.main(args + ["--stop-after", "1"]) == 3:
        runs += 1
        assert runs < 20, "a stopped run made no progress"
    assert runs == 8 and _report_core(out) == rep  # 9 units: random continuations, log-probs, contrast, 2φ × 3 scores

    # A continuations file that recorded a failed request is asked again, and what was scored on it redone.
    cont_path = out / "continuations-addition-C8-hinted.json"
    broken = json.loads(cont_path.read_text())
    broken["errors"][0] = "teacher timed out"
    cont_path.write_text(json.dumps(broken))
    before = _stage_files(out)
    assert signal_probe.main(args) == 0
    after = _stage_files(out)
    assert not any(json.loads(cont_path.read_text())["errors"])
    for name in ("continuations-addition-C8-hinted.json", "scores-addition-C8-hinted-ned.json",
                 "scores-addition-C8-hinted-rouge1.json", "contrast-addition-C8-hinted.json",
                 "contrast-scores-addition-C8-hinted-ned.json", "contrast-scores-addition-C8-hinted-rouge1.json"):
        assert after[name][0] != before[name][0], name  # rewritten
    assert after["rollouts-addition.json"] == before["rollouts-addition.json"]
    assert _report_core(out) == rep  # the answered requests came from the reply cache


def test_one_digit_change_with_the_real_tokenizer():
    from transformers import AutoTokenizer

    from omniopd.assets import student_path

    tok = AutoTokenizer.from_pretrained(student_path("smollm2-135m"))
    digit_ids = {d: tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    ids = tok.encode("Ones: 7 + 8 = 15, write 5 and carry 1. The answer is 85.", add_special_tokens=False)
    anchor, chunk = 2, 8
    for seed in range(20):
        at, old, new, changed = signal_probe.change_one_digit(ids, anchor, chunk, digit_ids, seed)
        assert anchor <= at < anchor + chunk and old != new
        assert [i for i, (x, y) in enumerate(zip(ids, changed)) if x != y] == [at]
        before, after = tok.decode(ids), tok.decode(changed)
        assert len(before) == len(after)
        assert [(x, y) for x, y in zip(before, after) if x != y] == [(str(old), str(new))]
    words = tok.encode(" and carry the one over", add_special_tokens=False)
    assert signal_probe.change_one_digit(words, 0, len(words), digit_ids, 0) is None


def test_contrast_summary_against_the_dirichlet_formula():
    # Two forks of right rollouts (C=2, N=2, α=1): π̂ = (Σφ + α·π̄) / (N + α) in float64 by hand.
    lp_rows = [[-0.1, -0.3, -2.0], [-0.5, -0.5]]
    cont = {"chunk": 2, "n": 2, "forks": [{"seq": 0, "anchor": 0, "prefix": "", "chunk": "12"},
                                          {"seq": 1, "anchor": 0, "prefix": "", "chunk": "34"}],
            "texts": [["a", "b"], ["c", "d"]]}
    sc = {"values": [[1.0, 0.5], [0.2, 0.2]]}
    contrast = {"pairs": [{"fork": 0, "chunk": "19", "pi_bar": 0.3}, {"fork": 1, "chunk": "39", "pi_bar": 0.9}],
                "skipped_no_digit": 0}
    csc = {"values": [[0.5, 0.5], [0.2, 0.2]]}
    got = signal_probe.contrast_summary(cont, sc, contrast, csc, lp_rows, 2, 1.0)
    bar = [math.exp((-0.1 - 0.3) / 2), math.exp(-0.5)]
    true_hat = [(1.5 + bar[0]) / 3, (0.4 + bar[1]) / 3]
    changed_hat = [(1.0 + 0.3) / 3, (0.4 + 0.9) / 3]
    assert true_hat[0] > changed_hat[0] and true_hat[1] < changed_hat[1]  # one pair each way
    assert got["pairs"] == 2
    assert got["pi_hat_true_higher"] == 0.5
    assert got["k_over_n_true_higher"] == 0.75  # 0.75 > 0.5, then a tie (0.2 = 0.2) counting 1/2
    assert got["pi_bar_true_higher"] == 0.5  # 0.819 > 0.3, 0.607 < 0.9
    assert got["mean_pi_hat_drop"] == pytest.approx(np.mean(np.subtract(true_hat, changed_hat)), abs=1e-12)


def test_a_stop_inside_the_continuations_keeps_the_slices_already_sampled(tmp_path, monkeypatch):
    """Stopped after the first slice of teacher requests: the rerun takes that slice from the reply cache and
    asks only for the rest."""
    from omniopd.rollout.teachers.base import Teacher

    monkeypatch.setattr(signal_probe, "REQUESTS_PER_SLICE", 1)
    out = tmp_path / "sig"
    args = ["--task", "addition", "--chunk", "8", "--teacher", "hinted", "--student", "smollm2-135m", "--smoke",
            "--phi", "ned", "--no-opd", "--no-contrast", "--out", str(out)]
    real, calls = Teacher.generate, []

    def stop_on_second_slice(self, requests):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a stop while the second slice is being sampled
        return real(self, requests)

    monkeypatch.setattr(Teacher, "generate", stop_on_second_slice)
    with pytest.raises(KeyboardInterrupt):
        signal_probe.main(args)
    assert calls == [1, 1] and not (out / "continuations-addition-C8-hinted.json").exists()
    monkeypatch.setattr(Teacher, "generate", real)
    assert signal_probe.main(args) == 0
    cont = json.loads((out / "continuations-addition-C8-hinted.json").read_text())
    assert len(cont["forks"]) >= 2 and cont["cached_requests"] == 1 and not any(cont["errors"])


def test_stage_files_of_another_build_are_refused():
    """Stage files name their models by alias; the build that made them is checked too (a new recipe version keeps
    the alias), and the error names the file and both builds."""
    path = Path("rollouts-addition.json")
    signal_probe.check_build(path, "smollm2-135m", "smollm2-135m")  # the same build: fine
    signal_probe.check_build(path, None, "smollm2-135m")  # written before builds were recorded: trusted
    with pytest.raises(ValueError, match="rollouts-addition.json was made by smollm2-135m as built in "
                                         "warm-addition-v0, but smollm2-135m is now smollm2-135m"):
        signal_probe.check_build(path, "warm-addition-v0", "smollm2-135m")


def test_a_model_build_is_the_alias_folder_or_none_when_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIOPD_CACHE", str(tmp_path))
    assert signal_probe.model_build("warm:chained") is None  # not built here: nothing to check against
    assert signal_probe.model_build("/some/model/folder") == "/some/model/folder"
    from omniopd import finetune

    built = finetune.output_dir("warm", "chained")  # a finished build, as `finetune build` leaves it
    built.mkdir(parents=True)
    (built / "finetune.json").write_text(json.dumps({"recipe": finetune.RECIPES["warm:chained"].key()}))
    (built / ".complete").write_text("1")
    assert signal_probe.model_build("warm:chained") == built.name == "warm-chained-v2"


@pytest.mark.parametrize("call", [
    lambda: rank_stats.auc([0.1, math.nan, 0.3], [1, 0, 1]),
    lambda: rank_stats.within_auc([0.1, 0.2], [1, 0], [0]),
    lambda: rank_stats.auc([0.1, 0.2], [1, 2]),
    lambda: rank_stats.auc([0.1, 0.2, 0.3], [1, 0]),
    lambda: rank_stats.paired_difference([0.1, 0.2], [0.3, math.nan], [1, 0], [0, 0], within=False, reps=10),
])
def test_input_that_would_give_a_silently_wrong_auc_is_refused(call):
    with pytest.raises(ValueError, match="NaN|labels must be|values for"):
        call()


def test_mean_with_interval_resamples_prompts():
    # Prompt 0 won both pairs, prompt 1 lost its one: the mean is over pairs, the interval over prompt draws.
    got = rank_stats.mean_with_interval([1.0, 1.0, 0.0], [0, 0, 1], reps=400)
    assert got["mean"] == pytest.approx(2 / 3) and got["replicates"] == 400
    lo, hi = got["ci"]
    assert lo == 0.0 and hi == 1.0  # a draw of prompt 1 twice gives 0, of prompt 0 twice gives 1
    assert rank_stats.mean_with_interval([0.5] * 4, [0, 1, 2, 3], reps=50)["ci"] == [0.5, 0.5]


def test_within_differences_name_the_prompts_that_contribute():
    d = rank_stats.paired_difference([0.9, 0.1, 0.5, 0.4], [0.1, 0.9, 0.5, 0.4], [1, 0, 1, 1], [0, 0, 1, 1],
                                     within=True, reps=20)
    assert d["diff"] == 1.0 and d["units"] == 4 and d["prompts_with_both"] == 1


def test_targets_skip_a_failed_sample_the_way_the_scores_did():
    """A None sample (a failed row) among the first n: φ was computed on the first n answered texts, and π̂ must
    be too (N=3 sampled, n=2 scored: the subset path) — by hand, π̂ = (Σφ + α·π̄) / (n + α)."""
    cont = {"chunk": 2, "n": 3, "forks": [{"seq": 0, "anchor": 0, "prefix": "", "chunk": "12"},
                                          {"seq": 1, "anchor": 0, "prefix": "", "chunk": "34"}],
            "texts": [["a", None, "b", "c"], ["d", "e", "f"]]}
    phi = [[1.0, 0.5], [0.2, 0.4]]  # what make_scores gives for the first 2 answered texts of each
    lp_rows = [[-0.2, -0.4], [-1.0, -1.0]]
    t = signal_probe.targets(cont, phi, lp_rows, 2, 1.0)
    bar = [math.exp(-0.3), math.exp(-1.0)]
    assert t.kept == [0, 1] and t.rows == [0, 1]
    np.testing.assert_allclose(t.pi_hat, [(1.5 + bar[0]) / 3, (0.6 + bar[1]) / 3], rtol=1e-12)
    np.testing.assert_allclose(t.k_over_n, [0.75, 0.3], rtol=1e-12)


def test_contrast_fraction_has_a_prompt_interval():
    lp_rows = [[-0.1, -0.3], [-0.5, -0.5], [-0.2, -0.2]]
    cont = {"chunk": 2, "n": 2, "forks": [{"seq": i, "anchor": 0, "prefix": "", "chunk": c}
                                          for i, c in enumerate(["12", "34", "56"])],
            "texts": [["a", "b"], ["c", "d"], ["e", "f"]]}
    sc = {"values": [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]}
    contrast = {"pairs": [{"fork": i, "chunk": "99", "pi_bar": 0.5} for i in range(3)], "skipped_no_digit": 0}
    csc = {"values": [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]}  # rollouts 0 and 1 (prompt 0) win, rollout 2 loses
    got = signal_probe.contrast_summary(cont, sc, contrast, csc, lp_rows, 2, 1.0, prompts=[0, 0, 1], reps=300)
    assert got["pi_hat_true_higher"] == pytest.approx(2 / 3)
    assert got["pi_hat_true_higher_ci"] == [0.0, 1.0]


def test_continuations_are_reused_only_for_the_n_and_m_they_were_sampled_with(tmp_path):
    s = signal_probe.Settings(task="addition", student="smollm2-135m", num_continuations=10, num_chunks=2)
    path = tmp_path / "continuations-addition-C8-hinted.json"
    signal_probe.check_sampling(path, {"n": 10, "num_chunks": 2}, s)
    signal_probe.check_sampling(path, {"n": 10}, s)  # written before M was recorded: the default M=2
    with pytest.raises(ValueError, match=r"sampled with \{'n': 10, 'm': 2\}, not \{'n': 4, 'm': 2\}.*"
                                         r"N=4 as the first 4"):
        signal_probe.check_sampling(path, {"n": 10}, signal_probe.Settings(task="addition", student="x",
                                                                           num_continuations=4))
    with pytest.raises(ValueError, match=r"'m': 1"):
        signal_probe.check_sampling(path, {"n": 10, "num_chunks": 1}, s)


@pytest.mark.parametrize("argv, culprit", [
    (["--grid", "--chunk", "16"], "leave out --chunk"),
    (["--grid", "--teacher", "trained"], "leave out"),
    (["--n", "0"], "--n must be at least 1"),
    (["--m", "-1"], "--m must be at least 1"),
    (["--chunk", "8", "0"], "--chunk values must be at least 1"),
    (["--random-at", "-4"], "--random-at values must be at least 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be positive"),
])
def test_bad_flags_are_refused_before_anything_runs(argv, culprit, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        signal_probe.main(argv + ["--out", str(tmp_path / "sig")])
    assert e.value.code == 2 and culprit in capsys.readouterr().err
    assert not (tmp_path / "sig").exists()
