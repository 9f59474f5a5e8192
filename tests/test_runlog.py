"""Metrics: reductions over ranks declared where a metric is produced, and plotted keys that real steps emit."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniopd import losses
from omniopd.runlog import PLOTTED, Metric, combine_ranks, maximum, read_metrics, reduction, summed

REPO = Path(__file__).resolve().parents[1]


def test_ranks_combine_as_each_metric_declares():
    ranks = [{"loss/total": summed(0.25), "time/step_s": maximum(3.0), "rollout/reward_mean": 0.5,
              "audit/phi_mean": math.nan},
             {"loss/total": summed(0.5), "time/step_s": maximum(5.0), "rollout/reward_mean": 1.0,
              "audit/phi_mean": 0.3}]
    got = combine_ranks(ranks)
    assert got["loss/total"] == 0.75  # sum
    assert got["time/step_s"] == 5.0  # max
    assert got["rollout/reward_mean"] == 0.75  # a plain number is a mean
    assert got["audit/phi_mean"] == 0.3  # a rank without a finite value is left out, not counted as 0


def test_a_key_no_rank_has_is_nan_and_disagreeing_reductions_fail():
    assert math.isnan(combine_ranks([{"kl/unaudited_mean": math.nan}, {"kl/unaudited_mean": None}])[
        "kl/unaudited_mean"])
    with pytest.raises(ValueError, match="'loss/total'.*different reductions"):
        combine_ranks([{"loss/total": summed(1.0)}, {"loss/total": 1.0}])
    with pytest.raises(ValueError, match="reduction 'median'"):
        Metric(1.0, "median")  # type: ignore[arg-type]


def test_metric_is_a_float_that_keeps_its_reduction_across_ranks():
    m = pickle.loads(pickle.dumps(summed(2.5)))  # all_gather_object pickles it
    assert m == 2.5 and reduction(m) == "sum" and reduction(2.5) == "mean"
    assert isinstance(m + 1, float) and not isinstance(m + 1, Metric)


def test_library_logs_follow_verbosity(tmp_path):
    """transformers' weight-loading bar and logs are off at the default level and back at 'info'."""
    script = ("import sys; from omniopd.runlog import quiet_libraries; quiet_libraries(sys.argv[1]); "
              "from omniopd.assets import student_path; from transformers import AutoModelForCausalLM; "
              "AutoModelForCausalLM.from_pretrained(student_path())")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "TRANSFORMERS_V"))}
    outputs = {}
    for level in ("error", "info"):
        proc = subprocess.run([sys.executable, "-c", script, level], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[level] = proc.stdout + proc.stderr
    assert outputs["error"] == ""
    assert "Loading weights" in outputs["info"]


def test_losses_declare_their_sums():
    """The loss terms are divided by the global normalizer on each rank: ranks must add them."""
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    _, metrics = losses.sft(logits, tokens, mask, normalizer=4.0)
    assert reduction(metrics["loss/total"]) == "sum" and reduction(metrics["sft/nll_mean"]) == "mean"


def test_every_plotted_key_is_emitted_by_a_real_run(tmp_path):
    """One real omniopd step plus the held-out eval (bundled student and teacher, vLLM generation with a weight
    swap): every curve the run plots has a value in metrics.jsonl, so no panel is silently missing; and the
    console shows the run's own lines, not vLLM's or transformers' logs (the default log.verbosity)."""
    cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={tmp_path}", "--train.steps=1", "--train.batch_size=2",
           "--generation.n=2", "--generation.max_new_tokens=16", "--audit.chunk_len=4", "--audit.num_continuations=2",
           "--audit.similarity=ned", "--train.eval_size=2", "--train.eval_before=false", "--generation.backend=vllm",
           "--generation.kv_cache_gib=0.25", "--generation.max_model_len=1024", "--log.tensorboard=false",
           "--checkpoint.export=false", "--checkpoint.every=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    console = proc.stdout + proc.stderr
    assert "held-out accuracy after training" in console and "omniopd: 100%" in console
    # the first line names what this demo run does not run as the paper did, and summary.json records it
    first = proc.stdout.splitlines()[0]
    assert first.startswith("omniopd: the offline demo differs from the paper: audit.num_chunks=2 (paper: 10)"), first
    assert "audit.chunk_len=4 (paper: 50)" in first and "teacher.hint=solution (paper: none)" in first
    differences = json.loads((tmp_path / "summary.json").read_text())["differences_from_paper"]
    assert differences["audit.num_continuations"] == {"value": 2, "paper": 10, "why": "set by this run"}
    for noise in (" INFO ", " WARNING ", "Loading weights", "FutureWarning"):
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    # tqdm redraws its bar in place with \r: a terminal shows one line per \n
    assert console.count("\n") <= 24, console[-3000:]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    missing = [k for k in PLOTTED if not any(r.get(k) is not None for r in rows)]
    assert not missing, f"plotted but never emitted: {missing}"
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    eval_rows = (tmp_path / "eval_after.jsonl").read_text().splitlines()
    assert len(eval_rows) == 2  # the harness's graded records, one per held-out problem
