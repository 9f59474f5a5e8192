"""The overlapped and pipelined step (issue 13) in real trainers: the overlapped step's loss and gradients are
the synchronous step's on the same rollouts; a pipelined run trains on rollouts at most one step old and logs
the staleness and the importance ratios; a teacher that stops answering mid-flight costs the step no more than
`teacher.step_deadline_s`, and its chunks are dropped and counted."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
from latency_proxy import LatencyProxy
from test_fused_step import STEP, tiny_random_student

from omniopd.config import load_config
from omniopd.runlog import read_metrics
from omniopd.trainer import Trainer


@pytest.fixture(autouse=True)
def _no_leaked_process_group_env(monkeypatch):
    """An in-process Trainer writes its 1-rank process-group variables into os.environ; child processes of
    later tests must not inherit them."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_random_student(tmp_path_factory.mktemp("tiny"))


def _config(tiny: Path, out: Path, *extra: str):
    # The teacher cache stays on: the second run of a step then gets the very texts the first one got.
    args = [a for a in STEP if a != "--teacher.cache=off"]
    return load_config([f"--model.student={tiny}", f"--teacher.model={tiny}", f"--log.dir={out}", *args, *extra])


def _step_recording_grads(trainer: Trainer) -> tuple[dict[str, float], list[torch.Tensor]]:
    grads: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        grads.extend(p.grad.detach().clone() for p in trainer.model.parameters())
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    try:
        return trainer.train_step(), grads
    finally:
        trainer.optimizer.step = step


@pytest.mark.parametrize("selection", ["entropy", "random"])
def test_overlapped_step_equals_the_synchronous_step_on_the_same_rollouts(tiny, tmp_path, selection):
    cfg = _config(tiny, tmp_path, "--train.steps=1", f"--audit.selection={selection}")
    with Trainer(cfg) as trainer:
        rows = trainer._roll_out(trainer._next_problems())
        trainer._roll_out = lambda problems: rows  # both steps train on these rollouts
        weights = copy.deepcopy(trainer.model.state_dict())
        optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        sync, sync_grads = _step_recording_grads(trainer)
        requests = trainer.teacher.usage()["requests"]

        trainer.model.load_state_dict(weights)
        trainer.optimizer.load_state_dict(optimizer)
        trainer.cfg.train.overlap = True
        overlapped, grads = _step_recording_grads(trainer)
        usage = trainer.teacher.usage()

    assert requests > 0 and usage["last"]["cache_hits"] == requests  # the same teacher texts, from the cache
    assert sync["audit/chunks_audited"] > 0 and "time/teacher_wait_s" in overlapped and "time/anchors_s" in overlapped
    for key in ("loss/total", "loss/pg", "loss/kl", "audit/chunks_audited", "audit/chunks_dropped",
                "audit/entropy_anchor_mean", "audit/pi_hat_mean", "rollout/entropy_mean"):
        assert overlapped[key] == pytest.approx(sync[key], rel=1e-6, abs=1e-9), key
    assert len(grads) == len(sync_grads) > 0
    for g, ref in zip(grads, sync_grads):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-8)
    assert "pipeline/staleness" not in overlapped  # pipeline=0: no importance correction at all


def test_pipelined_run_trains_on_rollouts_at_most_one_step_old(tiny, tmp_path):
    cfg = _config(tiny, tmp_path, "--train.steps=3", "--train.pipeline=1", "--optim.lr=1e-3",
                  "--checkpoint.every=1", "--checkpoint.keep=3", "--teacher.cache=off")
    with Trainer(cfg) as trainer:
        trainer.fit()
    # A checkpoint taken while the next batch waits, drawn but not trained on, counts only the trained ones:
    # a resume draws that batch again instead of skipping it.
    size = cfg.train.batch_size
    positions = [torch.load(tmp_path / "checkpoints" / f"step_{k:06d}" / "trainer_state_rank0.pt",
                            weights_only=False)["stream"]["position"] for k in (1, 2, 3)]
    assert positions == [size, 2 * size, 3 * size]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["pipeline/staleness"] for r in rows] == [0.0, 1.0, 1.0]  # the first batch is produced in step 1
    first = rows[0]
    assert first["pipeline/ratio_min"] == first["pipeline/ratio_max"] == 1.0  # same weights: ρ is exactly 1
    for r in rows[1:]:
        stats = [r[f"pipeline/ratio_{k}"] for k in ("mean", "min", "max", "truncated_frac")]
        assert all(v == v for v in stats)  # logged, finite
        assert r["pipeline/ratio_min"] <= r["pipeline/ratio_mean"] <= r["pipeline/ratio_max"]
        assert r["pipeline/ratio_max"] != 1.0 or r["pipeline/ratio_min"] != 1.0  # lr 1e-3 moved the policy
        assert r["audit/chunks_audited"] > 0
    # Steps 1 and 2 also generated the next step's rollouts (in the background); the last one had none to make.
    assert rows[1]["time/generate_s"] > 0 and "time/generate_s" not in rows[2]


@pytest.mark.parametrize("mode", ["--train.overlap=true", "--train.pipeline=1"])
def test_teacher_dying_mid_flight_costs_at_most_the_step_deadline(tiny, tmp_path, vllm_server, monkeypatch, mode):
    """The teacher: the bundled model behind the real vLLM OpenAI-compatible server (tests/vllm_server.py)."""
    monkeypatch.setenv("OMNIOPD_TEST_KEY", vllm_server.api_key)
    deadline = 12.0
    with LatencyProxy(vllm_server.url, answer=2) as proxy:  # two requests answered, then silence
        cfg = _config(tiny, tmp_path, "--train.steps=1", mode, "--teacher.kind=openai",
                      f"--teacher.model={vllm_server.model}", f"--teacher.base_url={proxy.url}/v1",
                      "--teacher.api_key_env=OMNIOPD_TEST_KEY", "--teacher.completion_mode=chat",
                      "--teacher.max_retries=0", "--teacher.timeout_s=300", f"--teacher.step_deadline_s={deadline}",
                      "--teacher.cache=off", "--teacher.max_failed_steps=5")
        with Trainer(cfg) as trainer:
            start = time.monotonic()
            metrics = trainer.train_step()
            elapsed = time.monotonic() - start
            errors = trainer.teacher.usage()["errors"]
    forks = metrics["audit/chunks_audited"] + metrics["audit/chunks_dropped"]
    assert proxy.held >= 1 and forks == len(proxy.arrivals)
    # Everything held open failed at the deadline and its chunk was dropped and counted; the rest trained.
    assert metrics["teacher/failed_requests"] == metrics["audit/chunks_dropped"] == proxy.held
    assert metrics["audit/chunks_audited"] == 2
    assert any("deadline" in e for e in errors), errors
    assert metrics["time/teacher_wait_s"] <= deadline + 2.0
    assert metrics["time/teacher_s"] == pytest.approx(deadline, abs=2.0)
    assert elapsed < deadline + 60  # the rest of the step (tiny model) is quick; no stall beyond the deadline
