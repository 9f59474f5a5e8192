"""Evidence: the objectives and the omniopd variants of `experiments/matrix.toml`, run to learn, with curves.

    .venv/bin/python experiments/compare.py                          # the CPU matrix, resuming what is done
    .venv/bin/python experiments/compare.py --rows omniopd sft --seeds 0
    .venv/bin/python experiments/compare.py --device cuda            # the one-GPU budget
    .venv/bin/python experiments/compare.py --report-only            # tables and plots from what is done

Every (row, seed) is one real `python -m omniopd.train` run in its own process, with the budget's shared
arguments and the row's flags; `--jobs` of them run at once (the cores split between them). A finished run
is recorded in `experiments/results/<budget>/matrix.json` (its held-out curve, teacher tokens, wall time)
and never run again, so a matrix interrupted at any point, or continued from a fresh clone, resumes where it
stopped; a run interrupted mid-way resumes from its last checkpoint (`runs/compare/...`, same machine).
Writes `matrix.json`, `matrix.md` and the PNGs next to it after every finished run (the report half is
`matrix_report.py`; run directories are recorded relative to the repository). Runners on other rows or
seeds may share one results folder: each write keeps the runs the others recorded meanwhile.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run as a script from a clone: `omniopd` importable without an install
sys.path.insert(0, str(HERE))  # its report half, matrix_report.py

from matrix_report import interval, line_styles, report, wilson  # noqa: E402,F401  (tests read them here)

from omniopd.config import ConfigError, load_config  # noqa: E402
from omniopd.runlog import read_metrics  # noqa: E402

CURVE_KEYS = {"eval/accuracy": "accuracy", "eval/repetition_mean": "repetition",
              "eval/response_len_mean": "response_len"}
POLL_S = 2  # how often the runner looks at its runs
WALL_SAVE_S = 30  # how often a running run's wall time is written beside its log (a kill loses at most this)


class MatrixError(ValueError):
    """A matrix file that cannot be run; the message names the file and the entry."""


@dataclass
class Budget:
    name: str
    jobs: int
    seeds: list[int]
    args: list[str]


@dataclass
class Row:
    name: str
    args: list[str]
    seeds: list[int] | None = None


@dataclass
class Matrix:
    budgets: dict[str, Budget]
    rows: list[Row]


@dataclass
class Run:
    row: str
    seed: int
    argv: list[str]
    dir: Path
    results: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.row}/seed{self.seed}"


def _strings(where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a.startswith("--") for a in value):
        raise MatrixError(f"{where}: 'args' must be a list of '--section.key=value' strings, got {value!r}")
    return list(value)


def _seeds(where: str, value: object) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in value):
        raise MatrixError(f"{where}: 'seeds' must be a non-empty list of integers, got {value!r}")
    return list(value)


def _only_keys(where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MatrixError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(allowed))})")


def load_matrix(path: Path) -> Matrix:
    """Parse and check a matrix file: every row's flags load as a valid config on every budget (the same
    check `python -m omniopd.train` runs), so a typo fails here, not an hour into the matrix."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MatrixError(f"{path}: {e}") from e
    _only_keys(str(path), spec, {"budget", "row"})
    budgets = {}
    for name, table in spec.get("budget", {}).items():
        where = f"{path}: [budget.{name}]"
        _only_keys(where, table, {"jobs", "seeds", "args"})
        jobs = table.get("jobs", 1)
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise MatrixError(f"{where}: 'jobs' must be an integer >= 1, got {jobs!r}")
        budgets[name] = Budget(name, jobs, _seeds(where, table.get("seeds", [0])), _strings(where, table.get("args")))
    if not budgets:
        raise MatrixError(f"{path}: no [budget.<name>] table")
    rows: list[Row] = []
    for i, table in enumerate(spec.get("row", [])):
        where = f"{path}: row {i + 1}"
        _only_keys(where, table, {"name", "args", "seeds"})
        name = table.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise MatrixError(f"{where}: 'name' must be a non-empty string without '/', got {name!r}")
        if any(r.name == name for r in rows):
            raise MatrixError(f"{where}: row name {name!r} is used twice")
        seeds = _seeds(f"{where} ({name})", table["seeds"]) if "seeds" in table else None
        rows.append(Row(name, _strings(f"{where} ({name})", table.get("args", [])), seeds))
    if not rows:
        raise MatrixError(f"{path}: no [[row]] entries")
    for budget in budgets.values():
        for row in rows:
            try:
                load_config([*budget.args, *row.args])
            except ConfigError as e:
                raise MatrixError(f"{path}: row {row.name!r} on budget {budget.name!r}: {e}") from e
    return Matrix(budgets, rows)


def plan(matrix: Matrix, budget: Budget, runs_dir: Path, rows: list[str] | None = None,
         seeds: list[int] | None = None) -> list[Run]:
    """The runs to have, seed-major (every row's seed 0 before any seed 1: a partial matrix covers every row)."""
    unknown = sorted(set(rows or []) - {r.name for r in matrix.rows})
    if unknown:
        raise MatrixError(f"--rows: unknown row {unknown[0]!r} (rows: {', '.join(r.name for r in matrix.rows)})")
    chosen = [r for r in matrix.rows if rows is None or r.name in rows]
    all_seeds = sorted({s for r in chosen for s in (r.seeds or budget.seeds)})
    out = []
    for seed in all_seeds:
        for row in chosen:
            if seed in (row.seeds or budget.seeds) and (seeds is None or seed in seeds):
                run_dir = runs_dir / budget.name / row.name / f"seed{seed}"
                # Relative to the repository (runs start there): no machine's path in the committed results.
                log_dir = os.path.relpath(run_dir, REPO)
                argv = [*budget.args, *row.args, f"--train.seed={seed}", f"--log.dir={log_dir}"]
                out.append(Run(row.name, seed, argv, run_dir))
    return out


def collect(run: Run, wall_s: float) -> dict:
    """A finished run's record: its held-out curve (step 0 = the base student), teacher tokens by step, totals."""
    rows = read_metrics(run.dir / "metrics.jsonl")
    curve, tokens_so_far, offset, last = [], 0.0, 0.0, 0.0
    for r in rows:
        total = r.get("teacher/completion_tokens_total")
        if total is not None:  # a resumed run's teacher counter restarts from 0: keep the sum monotone
            offset += last if total < last else 0.0
            last = total
            tokens_so_far = offset + total
        if r.get("eval/accuracy") is not None:
            point = {"step": r["step"], "teacher_tokens": tokens_so_far}
            point.update({short: r.get(key) for key, short in CURVE_KEYS.items()})
            curve.append(point)
    if not curve or curve[-1]["step"] == 0:
        raise RuntimeError(f"{run.key}: {run.dir / 'metrics.jsonl'} holds no held-out evaluation after training")
    steps = [r for r in rows if r.get("time/step_s") is not None]
    phi = [r["audit/phi_mean"] for r in steps if r.get("audit/phi_mean") is not None]
    return {"row": run.row, "seed": run.seed, "argv": run.argv, "curve": curve, "final": curve[-1],
            # the training-side signal: does the student's text move towards the teacher's at the forks?
            "phi_first5": statistics.fmean(phi[:5]) if phi else None,
            "phi_last5": statistics.fmean(phi[-5:]) if phi else None,
            "teacher_tokens": tokens_so_far, "train_steps": len(steps),
            "step_s_mean": statistics.mean(r["time/step_s"] for r in steps) if steps else math.nan,
            "wall_s": wall_s}


def execute(todo: list[Run], jobs: int, on_done, python: str = sys.executable) -> list[str]:
    """Run `todo` with at most `jobs` processes at once; `on_done(run, record)` after each success. Returns the
    failures (each names its log). A run with a checkpoint on disk resumes from it; one that finished before
    the matrix could record it is only collected. Ctrl-C / SIGTERM: every active run saves a checkpoint and
    stops (the trainer's own signal handling), then the interrupt goes on."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    waiting, active, failures = list(todo), [], []
    try:
        while waiting or active:
            while waiting and len(active) < jobs:
                run = waiting.pop(0)
                if (run.dir / "summary.json").is_file():  # finished, not yet recorded
                    on_done(run, collect(run, _previous_wall(run.dir)))
                    continue
                run.dir.mkdir(parents=True, exist_ok=True)
                resume = any((run.dir / "checkpoints").glob("step_*"))
                log = (run.dir / "run.log").open("a")
                cmd = [python, "-m", "omniopd.train", *run.argv, f"--checkpoint.resume={str(resume).lower()}"]
                print(f"start {run.key}{' (resuming its checkpoint)' if resume else ''}: log {run.dir / 'run.log'}",
                      flush=True)
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
                active.append((run, proc, log, time.time(), _previous_wall(run.dir)))
            time.sleep(POLL_S)
            for item in list(active):
                run, proc, log, start, before = item
                wall = before + time.time() - start
                running = proc.poll() is None
                if not running or int(wall) // WALL_SAVE_S != int(wall - POLL_S) // WALL_SAVE_S:
                    (run.dir / "wall_s.json").write_text(json.dumps({"wall_s": wall}))  # survives an interruption
                if running:
                    continue
                active.remove(item)
                log.close()
                if proc.returncode != 0:
                    failures.append(f"{run.key}: exit {proc.returncode}, see {run.dir / 'run.log'}")
                    print(f"FAILED {failures[-1]}", flush=True)
                    continue
                on_done(run, collect(run, wall))
                for ckpt in (run.dir / "checkpoints").glob("step_*"):  # ~1.6 GB each; a finished run needs none
                    shutil.rmtree(ckpt, ignore_errors=True)
    except KeyboardInterrupt:
        for run, proc, _, _, _ in active:
            print(f"interrupted: {run.key} saves a checkpoint and stops", flush=True)
            proc.send_signal(signal.SIGINT)
        for run, proc, log, start, before in active:
            proc.wait()
            log.close()
            (run.dir / "wall_s.json").write_text(json.dumps({"wall_s": before + time.time() - start}))
        raise
    return failures


def _previous_wall(run_dir: Path) -> float:
    """Wall seconds of earlier, interrupted attempts at this run (kept beside its log)."""
    path = run_dir / "wall_s.json"
    return json.loads(path.read_text())["wall_s"] if path.is_file() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=Path, default=HERE / "matrix.toml")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the budget to run")
    parser.add_argument("--budget", help="a budget of the matrix file by name (default: --device's)")
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: each row's)")
    parser.add_argument("--jobs", type=int, help="runs at once (default: the budget's)")
    parser.add_argument("--out", type=Path, help="results folder (default: experiments/results/<budget>)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "compare", help="per-run log folders")
    parser.add_argument("--report-only", action="store_true", help="rewrite the tables and plots, run nothing")
    args = parser.parse_args(argv)
    try:
        matrix = load_matrix(args.matrix)
        name = args.budget or args.device
        if name not in matrix.budgets:
            raise MatrixError(f"{args.matrix}: no [budget.{name}] (budgets: {', '.join(matrix.budgets)})")
        budget = matrix.budgets[name]
        runs = plan(matrix, budget, args.runs, args.rows, args.seeds)
    except MatrixError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not args.report_only:
        import torch

        if not torch.cuda.is_available():
            print("compare.py: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
    out = args.out or HERE / "results" / budget.name
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "matrix.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    if results.get("budget_args", budget.args) != budget.args:
        print(f"compare.py: error: {results_path} was made with other budget arguments; a matrix mixes no "
              "budgets (move it away to start over)", file=sys.stderr)
        return 2
    planned = plan(matrix, budget, args.runs)  # the whole matrix, for "n of m" and what is missing
    results.update(budget=budget.name, budget_args=budget.args, row_order=[r.name for r in matrix.rows],
                   planned=len(planned), eval_size=load_config(budget.args).train.eval_size)

    def write(run: Run | None = None, record: dict | None = None) -> None:
        if run is not None:
            results["runs"][run.key] = record
            print(f"done {run.key}: accuracy {record['curve'][0]['accuracy']:.3f} -> {record['final']['accuracy']:.3f}"
                  f" ({record['wall_s'] / 60:.1f} min)", flush=True)
        # Another compare.py may share this folder (other rows, same budget): keep what it recorded meanwhile.
        with open(out / "matrix.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if results_path.is_file():
                results["runs"] = {**json.loads(results_path.read_text())["runs"], **results["runs"]}
            results["missing"] = [r.key for r in planned if r.key not in results["runs"]]
            tmp = results_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(results_path)  # atomic: an interrupted write never loses finished runs
            print(report(results, out), flush=True)

    if args.report_only:
        for run in planned:  # what this machine still has on disk is read again (records gain new fields)
            if run.key in results["runs"] and (run.dir / "metrics.jsonl").is_file():
                results["runs"][run.key] = collect(run, results["runs"][run.key]["wall_s"])
        write()
        return 0
    todo = [r for r in runs if r.key not in results["runs"]]
    print(f"{len(runs) - len(todo)} of {len(runs)} selected runs already done; running {len(todo)}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the runs like Ctrl-C
    try:
        failures = execute(todo, args.jobs or budget.jobs, write)
    except KeyboardInterrupt:
        write()
        print("compare.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    write()
    for failure in failures:
        print(f"compare.py: failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
