"""End-to-end training step: wall time per phase (generate / trainer forward / teacher / score / backward
and optimizer step / weight swap) of the built-in default, for each objective.

`pytest bench/test_bench_step.py --benchmark-only -s`. Each objective runs a real 2-step
`python -m omniopd.train` (the first step warms caches and engines; step 2 is reported). The phase
breakdown lands in `benchmark.extra_info` and is printed as a table at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
PHASES = ["generate", "forward", "teacher", "score", "loss", "backward_step", "swap"]
ROWS: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("objective", ["omniopd", "opd", "sft", "rl"])
def test_step_phase_breakdown(benchmark, tmp_path, objective):
    def run() -> dict[str, float]:
        out = tmp_path / objective
        cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={out}", f"--objective.name={objective}",
               "--train.steps=2", "--train.eval_before=false", "--train.eval_after=false",
               "--checkpoint.export=false", "--log.plots=false", "--log.tensorboard=false", "--teacher.cache=off"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_metrics(out / "metrics.jsonl")[-1]

    step = benchmark.pedantic(run, rounds=1, iterations=1)
    total = step["time/step_s"]
    row = {phase: step.get(f"time/{phase}_s") or 0.0 for phase in PHASES}
    row["other"] = total - sum(row.values())
    row["total"] = total
    row["tokens_per_s"] = step["throughput/tokens_per_s"]
    benchmark.extra_info.update({f"{k}_s" if k in PHASES else k: v for k, v in row.items()})
    ROWS[objective] = row


def teardown_module() -> None:
    if not ROWS:
        return
    cols = PHASES + ["other", "total"]
    print("\n\nstep 2 of the built-in default, seconds per phase (share of the step)")
    print("| objective | " + " | ".join(cols) + " | response tokens/s |")
    print("|---|" + "---|" * (len(cols) + 1))
    for name, row in ROWS.items():
        cells = [f"{row[c]:.2f} ({row[c] / row['total']:.0%})" for c in cols[:-1]] + [f"{row['total']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['tokens_per_s']:.1f} |")
