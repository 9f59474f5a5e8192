"""Warm students and trained teachers (omniopd.finetune): aliases, a resumable reproducible build, a cached rerun,
and a real `python -m omniopd.train` run with the warm student, the chained task and the trained teacher.

The real recipes train for an hour or more; these build tiny ones (a few SFT steps on a handful of problems) in
a private $OMNIOPD_CACHE that links the converted bundled student, so nothing touches the user's cache.
Heavy (loads the 135M model): run under the shared lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniopd import assets, finetune
from omniopd.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY_BUILD = ["--steps=2", "--batch-size=2", "--problems=8"]


def _private_cache(folder: Path) -> Path:
    base = Path(assets.student_path())  # converted once in the real cache; linked, not rebuilt
    folder.mkdir()
    (folder / base.name).symlink_to(base)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    private = _private_cache(tmp_path / "cache")
    monkeypatch.setenv("OMNIOPD_CACHE", str(private))
    return private


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A private cache where the one command built both tiny chained models (the user's way, in one go)."""
    private = _private_cache(tmp_path_factory.mktemp("built") / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIOPD_CACHE", str(private))
        _run("omniopd.finetune", "build", "--task=chained", *TINY_BUILD)
    return private


def test_an_alias_not_built_says_so_and_how(cache):
    with pytest.raises(assets.AssetError, match=r"'warm:chained' is not built yet .*"
                                                 r"`python -m omniopd\.finetune build --task chained --only warm`"):
        assets.student_path("warm:chained")
    with pytest.raises(assets.AssetError, match=r"unknown task 'division'"):
        assets.student_path("teacher:division")
    assert finetune.main(["eval", "teacher:addition"]) == 2  # the CLI reports it too, without a traceback


def test_an_alias_built_with_the_current_recipe_resolves_without_a_warning_and_a_stale_one_warns(cache, capsys):
    out = finetune.output_dir("teacher", "addition")
    out.mkdir(parents=True)
    (out / ".complete").write_text("1")
    current = finetune.RECIPES["teacher:addition"].key()
    (out / "finetune.json").write_text(json.dumps({"recipe": current}))
    assert assets.student_path("teacher:addition") == str(out) and capsys.readouterr().err == ""
    (out / "finetune.json").write_text(json.dumps({"recipe": current | {"lr": 5e-5}}))
    assert assets.student_path("teacher:addition") == str(out)
    err = " ".join(capsys.readouterr().err.split())
    assert f"lr 5e-05 (recipe: {current['lr']!r})" in err and "--task addition --only teacher --rebuild" in err


def test_a_recipe_version_names_its_folder_so_a_build_of_an_older_task_version_is_not_taken(cache):
    assert finetune.output_dir("warm", "addition").name == "warm-addition-v1"
    assert finetune.output_dir("warm", "chained").name == "warm-chained-v2"  # the chained task's version 2
    assert finetune.RECIPES["teacher:chained"].key()["version"] == "2"
    older = finetune.output_dir("warm", "chained").parent / "warm-chained-v1"
    older.mkdir(parents=True)
    (older / ".complete").write_text("1")  # a finished build of task version 1
    with pytest.raises(assets.AssetError, match="'warm:chained' is not built yet"):
        assets.student_path("warm:chained")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    common = a.keys() & b.keys()  # a tied lm_head may be saved by one folder and not the other
    assert "model.embed_tokens.weight" in common and len(common) > 100
    return max((a[k] - b[k]).abs().max().item() for k in common)


def test_a_stopped_build_resumes_to_the_same_weights_and_a_rerun_is_cached(built, cache, capsys):
    # TINY_BUILD's warm recipe: `built` holds it trained in one go, without a stop
    recipe = dataclasses.replace(finetune.RECIPES["warm:chained"], problems=8, steps=2, batch_size=2)
    out = finetune.output_dir("warm", "chained")
    partial = finetune.build(recipe, stop_after=1)  # what a kill after step 1 leaves
    assert not finetune.is_built(out) and (partial / "checkpoint.pt").is_file()
    with pytest.raises(assets.AssetError, match="not built yet"):
        assets.student_path("warm:chained")
    lines: list[str] = []
    assert finetune.build(recipe, log=lines.append) == out
    assert any("resuming at step 1/2" in line for line in lines) and not partial.exists()
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["steps"] == 2 and meta["recipe"] == recipe.key() and meta["tokens"] > meta["response_tokens"] > 0
    resumed = _weights(out)

    in_one_go = built / out.relative_to(cache)
    assert json.loads((in_one_go / "finetune.json").read_text())["recipe"] == recipe.key()
    straight = _weights(in_one_go)
    base = _weights(Path(assets.student_path()))
    assert resumed.keys() == straight.keys() and _max_diff(resumed, straight) < 1e-6
    assert _max_diff(straight, base) > 1e-4  # it did train

    stamp = (out / ".complete").stat().st_mtime_ns
    lines.clear()
    assert finetune.build(recipe, log=lines.append) == out and lines == [f"[finetune] warm:chained: cached at {out}"]
    assert (out / ".complete").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert assets.student_path("warm:chained") == str(out)
    # a build of overridden steps serves the alias, but says it is not the current recipe (and how to rebuild)
    warm = finetune.RECIPES["warm:chained"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"steps 2 (recipe: {warm.steps})" in err and "--only warm --rebuild" in err
    assets.student_path("warm:chained")
    assert capsys.readouterr().err == ""  # said once per process
    with pytest.raises(finetune.FinetuneError, match="another recipe"):
        finetune.build(dataclasses.replace(recipe, steps=4))


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_train_runs_with_the_warm_student_the_chained_task_and_the_trained_teacher(built, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIOPD_CACHE", str(built))  # the one command built both models there
    again = _run("omniopd.finetune", "build", "--task=chained", *TINY_BUILD)
    assert again.stdout.count("cached at") == 2
    warm = Path(assets.student_path("warm:chained"))
    out = tmp_path / "run"
    # lr ~0 so the exported weights are the starting ones: they must be the warm student's, not the base model's
    _run("omniopd.train", f"--log.dir={out}", "--model.student=warm:chained", "--teacher.kind=local",
         "--teacher.model=teacher:chained", "--teacher.local_backend=hf", "--data.task=chained",
         "--train.steps=1", "--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=16",
         "--audit.chunk_len=4", "--audit.num_continuations=2", "--generation.backend=hf", "--train.eval_before=false",
         "--train.eval_size=2", "--optim.lr=1e-30", "--log.tensorboard=false", "--log.plots=false")
    rows = read_metrics(out / "metrics.jsonl")
    step = next(r for r in rows if r["step"] == 1 and "loss/total" in r)
    assert step["audit/chunks_audited"] + step["audit/chunks_dropped"] >= 1  # the teacher answered forks
    held_out = [json.loads(line) for line in (out / "eval_after.jsonl").read_text().splitlines()]
    assert held_out and all(r["problem_id"].startswith("chained-eval-") for r in held_out)
    exported, base = _weights(out / "export"), _weights(Path(assets.student_path()))
    assert _max_diff(exported, _weights(warm)) < 1e-6 and _max_diff(exported, base) > 1e-4


def test_results_carry_the_command_the_fine_tune_and_every_row(tmp_path):
    model = tmp_path / "warm-chained-v1"
    model.mkdir()
    meta = {"recipe": finetune.RECIPES["warm:chained"].key(), "steps": 20, "tokens": 42000, "train_seconds": 600.0,
            "tokens_per_second": 70.0, "torch_threads": 2, "losses": [1.0, 0.5]}
    (model / "finetune.json").write_text(json.dumps(meta))
    rows = [{"temperature": t, "max_new_tokens": 256, "hint": False, "problems": 4, "samples": n, "accuracy": a,
             "cut_off": c, "mean_tokens": 170.0, "seconds": 1.0} for t, n, a, c in [(0.0, 4, 0.25, 0.0),
                                                                                 (1.0, 16, 0.125, 0.0625)]]
    path = finetune.write_results({"model": "warm:chained", "path": str(model), "task": "chained", "backend": "hf",
                                   "rows": rows}, tmp_path / "out", "python -m omniopd.finetune eval warm:chained")
    written = json.loads(path.read_text())
    assert path.name == "warm-chained.json" and written["command"] == "python -m omniopd.finetune eval warm:chained"
    assert written["rows"] == rows and written["finetune"]["train_seconds"] == 600.0
    assert "losses" not in written["finetune"]
    md = (tmp_path / "out" / "warm-chained.md").read_text()
    assert "`python -m omniopd.finetune eval warm:chained`" in md and "10.0 min of training" in md
    assert "| 1.0 | 256 | no | 16 | 12.5% | – | 6.2% | 170 | 1.0 |" in md


def test_the_accuracy_interval_resamples_problems():
    # Every problem right (or none): no spread whatever is resampled.
    assert finetune.problem_bootstrap_interval([4, 4, 4], 4) == (1.0, 1.0)
    assert finetune.problem_bootstrap_interval([0, 0], 2) == (0.0, 0.0)
    # Half the problems always right, half never: the interval is the binomial spread of the problem draw
    # (40 problems: sd 0.079), far wider than 160 independent samples would suggest (sd 0.040).
    low, high = finetune.problem_bootstrap_interval([4] * 20 + [0] * 20, 4)
    assert low < 0.5 < high and 0.25 < high - low < 0.38


def test_an_evaluation_samples_greedy_once_grades_counts_cut_offs_and_reuses_finished_rows(tmp_path):
    # The bundled student on 2 held-out addition problems with a 4-token limit: no worked answer fits, so
    # every response is cut off and none is right, whatever the model says.
    rows_file = tmp_path / "rows.jsonl"
    kwargs = dict(problems=2, k=2, temperatures=[0.0, 1.0], limits=[4], hints=[False], backend="hf",
                  rows_file=rows_file)
    first = finetune.evaluate("smollm2-135m", "addition", log=lambda _: None, **kwargs)
    greedy, sampled = first["rows"]
    assert (greedy["samples"], sampled["samples"]) == (2, 4)  # greedy: one per problem; sampled: k per problem
    for row in (greedy, sampled):
        assert row["cut_off"] == 1.0 and row["accuracy"] == 0.0 and row["mean_tokens"] == 4
        assert row["accuracy_ci95"] == [0.0, 0.0] and row["problems_with_a_right_sample"] == 0
    assert len(rows_file.read_text().splitlines()) == 2

    logged: list[str] = []
    again = finetune.evaluate("smollm2-135m", "addition", log=logged.append, **kwargs)
    assert again["rows"] == first["rows"] and len(logged) == 2 and all("reused" in line for line in logged)
    # Another backend is another measurement: not taken from the file.
    logged.clear()
    finetune.evaluate("smollm2-135m", "addition", log=logged.append, **{**kwargs, "temperatures": [0.0],
                                                                        "backend": "auto"})
    assert len(logged) == 1 and "reused" not in logged[0]
    # With and without the hint in one call (one generator): the row without it is the one already measured.
    logged.clear()
    both = finetune.evaluate("smollm2-135m", "addition", log=logged.append, **{**kwargs, "temperatures": [0.0],
                                                                              "hints": [False, True]})
    assert [r["hint"] for r in both["rows"]] == [False, True] and both["rows"][0] == greedy
    assert "reused" in logged[0] and "reused" not in logged[1]
