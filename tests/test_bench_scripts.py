"""The GPU step benchmark and the CPU step-memory benchmark run (small) on CPU and write their tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# An in-process Trainer earlier in the session leaves its 1-rank process-group variables in os.environ; a
# child inheriting them would join that (long gone) group's port instead of making its own.
_GROUP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _run(*args: str, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_VARS}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(env, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_gpu_step_small_runs_real_steps_on_cpu(tmp_path):
    out = tmp_path / "gpu_step.md"
    _run("bench/gpu_step.py", "--small", f"--out={out}")
    lines = out.read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| step |")).strip("|").split("|")]
    rows = [line for line in lines if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 2  # two real trainer steps
    for row in rows:
        cell = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
        step_s, trainer_s = float(cell["step s"]), float(cell["trainer s"])
        floor_s = float(cell["trainer FLOP floor s"])
        assert step_s > trainer_s > 0 and floor_s > 0
        assert float(cell["loss s"]) > 0  # the objective is its own phase
    assert "median loss phase" in out.read_text()  # the fused loss's time, readable on a GPU


def test_cpu_step_memory_small_fused_peak_below_logits(tmp_path):
    out = tmp_path / "mem.md"
    _run("bench/cpu_step_memory.py", "--small", f"--out={out}")
    ratio = float(re.search(r"fused / logits: peak ([0-9.]+)", out.read_text()).group(1))
    assert 0 < ratio < 0.6  # measured 0.30 at 2 x 64 tokens, V=262,144
