"""experiments/compare.py: the matrix file's checks, the interval over seeds, and a real two-run matrix that
resumes instead of running again."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare", REPO / "experiments" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
sys.modules["compare"] = compare
_spec.loader.exec_module(compare)

TINY = ["--train.steps=2", "--train.eval_every=1", "--train.batch_size=2", "--generation.n=2",
        "--generation.max_new_tokens=16", "--audit.chunk_len=4", "--audit.num_continuations=2",
        "--train.eval_size=2", "--generation.backend=hf", "--log.tensorboard=false", "--log.plots=false",
        "--checkpoint.every=1", "--checkpoint.keep=1", "--checkpoint.export=false"]


def _matrix(tmp_path: Path, rows: str, budget_args: list[str] = TINY) -> Path:
    path = tmp_path / "matrix.toml"
    path.write_text(f"[budget.cpu]\nseeds = [0]\nargs = {json.dumps(budget_args)}\n\n{rows}")
    return path


def test_the_committed_matrix_loads_on_every_budget():
    matrix = compare.load_matrix(REPO / "experiments" / "matrix.toml")
    assert set(matrix.budgets) == {"cpu", "cuda"}
    names = [r.name for r in matrix.rows]
    assert names[:4] == ["omniopd", "sft", "rl", "opd"]
    runs = compare.plan(matrix, matrix.budgets["cpu"], Path("/tmp/runs"))
    assert len(runs) == 3 * len(names) and [r.key for r in runs[:2]] == ["omniopd/seed0", "sft/seed0"]


@pytest.mark.parametrize("rows, message", [
    ('[[row]]\nname = "a"\nargs = ["--audit.num_chunk=2"]\n', "row 'a' on budget 'cpu'.*num_chunks"),
    ('[[row]]\nname = "a"\nargs = ["--objective.name=sft"]\n[[row]]\nname = "a"\n', "row name 'a' is used twice"),
    ('[[row]]\nname = "a"\nflags = []\n', "row 1: unknown key 'flags'"),
    ('[[row]]\nname = "a"\nargs = "--x=1"\n', r"row 1 \(a\): 'args' must be a list"),
    ('[[row]]\nname = "a"\nseeds = []\n', r"row 1 \(a\): 'seeds' must be a non-empty list"),
    ('[[row]]\nname = "a/b"\n', "'name' must be a non-empty string without '/'"),
    ('[[row]\n', "matrix.toml"),
])
def test_bad_matrix_files_name_the_entry(tmp_path, rows, message):
    with pytest.raises(compare.MatrixError, match=message):
        compare.load_matrix(_matrix(tmp_path, rows))


def test_interval_is_the_95_percent_t_interval():
    mean, half = compare.interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # t(0.975, 2 dof) * s / sqrt(n)
    assert math.isnan(compare.interval([0.5])[1])
    lo, hi = compare.wilson(0.1, 100)  # hand-computed: centre 0.1147, half 0.0583
    assert (lo, hi) == (pytest.approx(0.05523, abs=1e-4), pytest.approx(0.17437, abs=1e-4))


def _record(row: str, seed: int, final: float) -> dict:
    curve = [{"step": 0, "accuracy": 0.1, "repetition": 0.05, "response_len": 40.0, "teacher_tokens": 0.0},
             {"step": 10, "accuracy": final, "repetition": 0.04, "response_len": 30.0, "teacher_tokens": 500.0}]
    return {"row": row, "seed": seed, "curve": curve, "final": curve[-1], "phi_first5": None, "phi_last5": None,
            "teacher_tokens": 500.0, "step_s_mean": 10.0, "wall_s": 600.0}


def test_the_table_shows_every_seed_beside_the_interval(tmp_path):
    results = {"runs": {"sft/seed0": _record("sft", 0, 0.2), "sft/seed1": _record("sft", 1, 0.3),
                        "rl/seed0": _record("rl", 0, 0.1)},
               "budget": "cpu", "budget_args": ["--train.steps=10"], "row_order": ["sft", "rl"], "planned": 4,
               "eval_size": 128, "missing": ["rl/seed1"]}
    table = compare.report(results, tmp_path)
    # mean 0.25, s = 0.0707, half-width t(0.975, 1 dof) * s / sqrt(2) = 12.706 * 0.05 = 0.635
    assert "| sft | 0,1 | 0.250 ± 0.635 (0.200, 0.300) | 0.150 ± 0.635 |" in table
    assert "| rl | 0 | 0.100 | 0.000 |" in table  # one seed: the value alone
    # Wilson at p = 0.1, n = 128: centre 0.11166, half 0.05252 (by hand)
    assert "over 128 problems is [0.059, 0.164]" in table and "Not run yet: rl/seed1." in table


def test_every_row_of_a_large_matrix_draws_alike_to_no_other():
    """The committed matrix has 11 rows and tab10 ten colours: the eleventh once drew exactly like the first."""
    for n in (11, 40):
        rows = [f"row{i}" for i in range(n)]
        colors, styles = compare.line_styles(rows)
        assert len({(colors[r], styles[r]) for r in rows}) == n
    assert compare.line_styles(["a", "b"])[1] == {"a": "-", "b": "-"}  # few rows: solid lines only
    with pytest.raises(ValueError, match="41 rows"):
        compare.line_styles([f"row{i}" for i in range(41)])


def test_a_real_matrix_runs_reports_and_resumes(tmp_path, capsys):
    path = _matrix(tmp_path, '[[row]]\nname = "rl"\nargs = ["--objective.name=rl"]\n'
                             '[[row]]\nname = "sft"\nargs = ["--objective.name=sft"]\n')
    argv = ["--matrix", str(path), "--out", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"),
            "--jobs", "2"]  # both rows at once, a thread each
    assert compare.main(argv) == 0
    results = json.loads((tmp_path / "results" / "matrix.json").read_text())
    assert sorted(results["runs"]) == ["rl/seed0", "sft/seed0"] and results["missing"] == []
    for record in results["runs"].values():
        assert [p["step"] for p in record["curve"]] == [0, 1, 2]  # before, every step, after
        assert all(0 <= p["accuracy"] <= 1 for p in record["curve"])
        assert record["train_steps"] == 2 and record["wall_s"] > 0
    assert results["runs"]["sft/seed0"]["teacher_tokens"] > 0  # sft trains on teacher-written responses
    assert results["runs"]["rl/seed0"]["teacher_tokens"] == 0
    assert not any((tmp_path / "runs").rglob("step_*"))  # a finished run's checkpoints are gone
    table = (tmp_path / "results" / "matrix.md").read_text()
    assert "| base student |" in table and "| rl | 0 |" in table and "| sft | 0 |" in table
    assert results["eval_size"] == 2 and "95% Wilson interval over 2 problems" in table  # from the real config
    for png in ("accuracy.png", "repetition.png", "teacher_tokens.png"):
        assert (tmp_path / "results" / png).stat().st_size > 5_000
    capsys.readouterr()
    assert compare.main(argv) == 0  # everything recorded: nothing runs again
    assert "2 of 2 selected runs already done; running 0" in capsys.readouterr().out
    # other budget arguments against the same results: refused, nothing mixed
    other = _matrix(tmp_path, '[[row]]\nname = "rl"\nargs = ["--objective.name=rl"]\n',
                    [a for a in TINY if a != "--train.steps=2"] + ["--train.steps=3"])
    assert compare.main(["--matrix", str(other), *argv[2:]]) == 2


def test_two_runners_sharing_a_results_folder_keep_each_others_runs(tmp_path, monkeypatch):
    """Two compare.py processes on other rows of one matrix: a run the other one recorded after this one read
    matrix.json is still there after this one writes."""
    path = _matrix(tmp_path, '[[row]]\nname = "rl"\nargs = ["--objective.name=rl"]\n'
                             '[[row]]\nname = "sft"\nargs = ["--objective.name=sft"]\n')
    results_path = tmp_path / "results" / "matrix.json"
    results_path.parent.mkdir()
    results_path.write_text(json.dumps({"runs": {}}))
    def record(row: str, accuracy: float) -> dict:  # the shape `collect` makes
        curve = [{"step": step, "teacher_tokens": 0.0, "accuracy": acc, "repetition": 0.0, "response_len": 9.0}
                 for step, acc in ((0, 0.25), (2, accuracy))]
        return {"row": row, "seed": 0, "argv": [], "curve": curve, "final": curve[-1], "phi_first5": None,
                "phi_last5": None, "teacher_tokens": 0.0, "train_steps": 2, "step_s_mean": 0.5, "wall_s": 1.0}

    def execute(todo, jobs, on_done):
        assert [r.key for r in todo] == ["sft/seed0"]
        other = json.loads(results_path.read_text())  # the other runner finishes rl meanwhile
        other["runs"]["rl/seed0"] = record("rl", 0.5)
        results_path.write_text(json.dumps(other))
        on_done(todo[0], record("sft", 0.75))
        return []

    monkeypatch.setattr(compare, "execute", execute)
    argv = ["--matrix", str(path), "--out", str(results_path.parent), "--runs", str(tmp_path / "runs")]
    assert compare.main([*argv, "--rows", "sft"]) == 0
    results = json.loads(results_path.read_text())
    assert sorted(results["runs"]) == ["rl/seed0", "sft/seed0"] and results["missing"] == []
    assert "| rl | 0 |" in (results_path.parent / "matrix.md").read_text()


def test_run_directories_are_recorded_relative_to_the_repository():
    """No machine's path in committed results: new runs record `--log.dir` relative to the repository (the runs
    start there), and the committed matrix.json holds no absolute path."""
    matrix = compare.load_matrix(REPO / "experiments" / "matrix.toml")
    for run in compare.plan(matrix, matrix.budgets["cpu"], REPO / "runs" / "compare"):
        [log_dir] = [a.split("=", 1)[1] for a in run.argv if a.startswith("--log.dir=")]
        assert not Path(log_dir).is_absolute() and (REPO / log_dir).resolve() == run.dir.resolve()
    for path in (REPO / "experiments" / "results").glob("*/matrix.json"):
        for record in json.loads(path.read_text())["runs"].values():
            assert not any(a.startswith("--log.dir=/") for a in record["argv"]), (path, record["argv"])
