"""The parts behind the fault suite, in-process and fast: the run-folder lock, the resume rules, checkpoint
manifests and the export target check (tests/test_run_faults.py runs them through real trainer processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniopd.checkpoint_files import EXPORT_MARKER, export_problem, newest_intact, verify, write_manifest
from omniopd.config import Config
from omniopd.resume_rules import SAFE_TO_CHANGE, ResumeConfigError, apply_optim, compare, truncate_metrics
from omniopd.runlock import LOCK_NAME, RunLock, RunLockError


def test_a_held_lock_refuses_a_second_owner_and_a_clean_release_removes_it(tmp_path):
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunLockError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()  # a second open file description: flock conflicts even in one process
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


def test_a_dead_processes_lock_is_taken_over_and_says_so(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.notice.startswith(f"took over the run folder's lock from pid {dead.pid} (no longer running")
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_resume_rules_apply_safe_keys_and_refuse_others_naming_both_values():
    saved = Config().to_dict()
    current = Config()
    current.optim.lr, current.train.steps = 1e-3, 9
    assert compare(saved, current.to_dict(), Config().to_dict()) == ["optim.lr: 1e-05 -> 0.001",
                                                                    "train.steps: 4 -> 9"]
    current.audit.alpha = 2.0
    with pytest.raises(ResumeConfigError, match=r"audit.alpha was 1.0 in the checkpoint and is 2.0 now"):
        compare(saved, current.to_dict(), Config().to_dict())


def test_a_key_the_checkpoint_predates_counts_as_its_default():
    saved = Config().to_dict()
    del saved["export"]  # a checkpoint written before the key existed
    assert compare(saved, Config().to_dict(), Config().to_dict()) == []
    current = Config()
    current.export.overwrite = True  # listed as safe
    assert compare(saved, current.to_dict(), Config().to_dict()) == ["export.overwrite: False -> True"]
    assert "model.student" not in SAFE_TO_CHANGE and "data.train" not in SAFE_TO_CHANGE


def test_a_checkpoint_from_before_train_defaults_resumes_a_demo_run_and_still_guards_its_values():
    """train.defaults only picks values that are compared one by one: a checkpoint written before the key
    existed (so it counts as Config()'s 'auto') resumes a run resolved to the demo; a changed method value
    is still refused."""
    from omniopd.config import load_config

    demo = load_config([])
    assert demo.train.defaults == "demo" and Config().train.defaults == "auto"
    saved = demo.to_dict()
    del saved["train"]["defaults"]  # as an old checkpoint's stored config
    assert compare(saved, demo.to_dict(), Config().to_dict()) == []
    changed = load_config(["--audit.chunk_len=9"])
    with pytest.raises(ResumeConfigError, match=r"audit.chunk_len was 8 in the checkpoint and is 9 now"):
        compare(saved, changed.to_dict(), Config().to_dict())


def test_apply_optim_puts_the_new_rate_at_the_restored_schedule_position():
    """Restored AdamW + LambdaLR state carries the saved rate; after apply_optim the next step uses the new one."""
    def build(lr: float, warmup: int):
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return p, opt, sched

    p, opt, sched = build(1e-5, 4)
    for _ in range(2):
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    _, opt2, sched2 = build(1e-3, 4)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-5 * 3 / 4)  # the saved rate came back
    cfg = Config().optim
    cfg.lr, cfg.warmup_steps = 1e-3, 4
    apply_optim(opt2, sched2, cfg)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)  # step 2 of a 4-step warm-up
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3) and sched2.get_last_lr() == pytest.approx([1e-3])


def test_metrics_are_cut_back_to_the_checkpoint_step_dropping_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"step": s, "loss/total": 1.0}) + "\n" for s in (0, 1, 2, 3))
    path.write_text(rows + '{"step": 4, "lo')
    assert truncate_metrics(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert truncate_metrics(path, 2) == 0


def _checkpoint(folder: Path, shard_bytes: int = 4096) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"meta" * 10)
    (folder / "__0_0.distcp").write_bytes(os.urandom(shard_bytes))
    (folder / "trainer_state_rank0.pt").write_bytes(b"state")
    (folder / "world_size").write_text("1")
    write_manifest(folder)
    return folder


def test_verify_names_a_truncated_a_changed_and_a_missing_file(tmp_path):
    root = tmp_path / "checkpoints"
    ok, bad_size, bad_sum, missing = (_checkpoint(root / f"step_00000{i}") for i in (1, 2, 3, 4))
    (bad_size / "__0_0.distcp").write_bytes(b"x")
    (bad_sum / ".metadata").write_bytes(b"META" * 10)  # same size, other bytes
    (missing / "world_size").unlink()
    assert verify(ok) is None
    assert verify(bad_size) == "__0_0.distcp is 1 bytes, the manifest says 4096"
    assert verify(bad_sum) == ".metadata does not match its checksum"
    assert verify(missing) == "world_size is missing"
    found, skipped = newest_intact(root)
    assert found == (1, ok) and [line.split(":")[0] for line in skipped] == [str(missing), str(bad_sum), str(bad_size)]


def test_the_export_target_is_ours_only_with_our_marker_and_no_foreign_file(tmp_path):
    out = tmp_path / "export"
    assert export_problem(out) is None
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"w")
    assert "no .omniopd-export marker" in export_problem(out)
    (out / EXPORT_MARKER).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert export_problem(out) is None
    (out / "notes.txt").write_text("mine")
    assert export_problem(out) == f"{out} holds files an export did not write: notes.txt"


def test_the_demo_restarts_only_its_own_folder_and_any_other_fresh_start_is_refused(tmp_path, monkeypatch):
    """`bash scripts/train.sh` twice restarts the demo in runs/default; the same folder holding another run
    (or any other folder holding a run) is refused, and nothing is removed."""
    from omniopd.config import load_config
    from omniopd.faults import RunFault
    from omniopd.preflight import check_fresh_start

    monkeypatch.chdir(tmp_path)
    demo = load_config([])
    out = Path(demo.log.dir)
    said: list[str] = []

    def previous_run(config: dict) -> None:
        (out / "checkpoints" / "step_000004").mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text('{"step": 1}\n')
        (out / "config.json").write_text(json.dumps(config))

    paper = load_config(["--train.defaults=paper"])
    previous_run(paper.to_dict())  # a run of the paper's values in the default folder: not the demo's
    with pytest.raises(RunFault, match=r"log.dir=runs/default: holds an earlier run .*--resume"):
        check_fresh_start(demo, out, said.append, is_main=True)
    assert (out / "checkpoints" / "step_000004").is_dir() and (out / "metrics.jsonl").stat().st_size > 0

    previous_run(demo.to_dict())
    check_fresh_start(demo, out, said.append, is_main=True)
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert said and "restarting the demo" in said[0]

    elsewhere = load_config([f"--log.dir={tmp_path / 'other'}"])
    out = Path(elsewhere.log.dir)
    previous_run(elsewhere.to_dict())
    with pytest.raises(RunFault, match="new --log.dir"):
        check_fresh_start(elsewhere, out, said.append, is_main=True)
    check_fresh_start(load_config([f"--log.dir={out}", "--resume"]), out, said.append, is_main=True)  # resume: fine


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class _BuggyLinear(torch.nn.Linear):
    def state_dict(self, *args, **kwargs):
        raise RuntimeError("a bug of ours")


def test_a_checkpoint_of_another_shape_is_a_checkpoint_error_and_a_bug_of_ours_keeps_its_type(tmp_path, one_rank_group):
    """Only file and shape faults become the one-line CheckpointError (exit 2); any other RuntimeError is raised
    as it is, so its traceback shows."""
    from omniopd import checkpoint

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(4, 4)
    path = checkpoint.save(root, 1, model, torch.optim.AdamW(model.parameters()), {"step": 1}, keep=2)
    assert checkpoint.verify(path) is None
    other = torch.nn.Linear(4, 5)
    with pytest.raises(checkpoint.CheckpointError, match="cannot restore this checkpoint"):
        checkpoint.load(path, other, torch.optim.AdamW(other.parameters()))
    buggy = _BuggyLinear(4, 4)
    with pytest.raises(RuntimeError, match="a bug of ours") as caught:
        checkpoint.save(root, 2, buggy, torch.optim.AdamW(buggy.parameters()), {"step": 2}, keep=2)
    assert not isinstance(caught.value, checkpoint.CheckpointError)
    with pytest.raises(RuntimeError, match="a bug of ours") as caught:
        checkpoint.load(path, buggy, torch.optim.AdamW(buggy.parameters()))
    assert not isinstance(caught.value, checkpoint.CheckpointError)


def test_engine_and_rate_keys_may_change_and_a_checkpoint_before_rl_beta_compares_with_its_beta():
    saved = Config().to_dict()
    current = Config()
    current.teacher.input_tokens_per_minute, current.teacher.output_tokens_per_minute = 1000, 500
    current.model.activation_checkpointing = not current.model.activation_checkpointing
    current.generation.tensor_parallel_size, current.train.dry_run = 2, True
    assert len(compare(saved, current.to_dict(), Config().to_dict())) == 5

    old = Config()
    old.objective.beta = 0.25  # the rl baseline's KL weight then
    saved = old.to_dict()
    del saved["objective"]["rl_beta"]  # written before objective.rl_beta existed
    current = Config()
    current.objective.beta = 0.25
    current.objective.rl_beta = 0.25  # what that run used: no change
    assert compare(saved, current.to_dict(), Config().to_dict()) == []
    current.objective.rl_beta = Config().objective.rl_beta  # the new default differs from what that run used
    with pytest.raises(ResumeConfigError, match=r"objective.rl_beta was 0.25 in the checkpoint"):
        compare(saved, current.to_dict(), Config().to_dict())


def test_saving_a_saved_step_again_replaces_it_whole_and_leaves_no_aside_copy(tmp_path, one_rank_group):
    from omniopd import checkpoint

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save(root, 1, model, optimizer, {"step": 1}, keep=2)
    with torch.no_grad():
        model.weight.fill_(3.0)
    path = checkpoint.save(root, 1, model, optimizer, {"step": 1}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"] and checkpoint.verify(path) is None
    fresh = torch.nn.Linear(4, 4)
    checkpoint.load(path, fresh, torch.optim.AdamW(fresh.parameters()))
    assert torch.equal(fresh.weight, torch.full((4, 4), 3.0))  # the second save's weights


def _save_with_one_rank_limited(rank: int, store: str, root: str, results: str, limited: int, big: str) -> None:
    """One of two gloo ranks saving a checkpoint; on rank `limited` alone a file-size limit (a real EFBIG from the
    kernel) lets the small shard files through and stops one large file: rank 0's config.json, written while
    sealing (`big="config"`), or that rank's own trainer state (`big="state"`)."""
    import resource
    import signal
    from datetime import timedelta

    import torch.distributed as dist

    from omniopd import checkpoint

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save(Path(root), 1, model, optimizer, {"step": 1}, keep=3)  # a good one first
    if rank == limited:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    padding = {"padding": "x" * 200_000}
    extra = {"step": 2} | (padding if big == "state" else {})
    try:
        checkpoint.save(Path(root), 2, model, optimizer, extra, keep=3, config=padding if big == "config" else None)
        outcome = "saved"
    except checkpoint.CheckpointError as e:
        outcome = f"CheckpointError: {e}"
    except BaseException as e:  # noqa: BLE001 - what a rank raised is the test's result
        outcome = f"{type(e).__name__}: {e}"
    Path(results, f"rank{rank}").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.parametrize(("limited", "big"), [(0, "config"), (1, "state")])
def test_a_save_that_fails_on_one_rank_fails_on_every_rank_and_keeps_the_earlier_checkpoint(tmp_path, limited, big):
    import torch.multiprocessing as mp

    from omniopd.checkpoint_files import checkpoints, verify

    root, results = tmp_path / "checkpoints", tmp_path / "results"
    results.mkdir()
    mp.spawn(_save_with_one_rank_limited, args=(str(tmp_path / "store"), str(root), str(results), limited, big),
             nprocs=2)
    failed, other = (results / f"rank{limited}").read_text(), (results / f"rank{1 - limited}").read_text()
    assert failed.startswith("CheckpointError") and "step-2 checkpoint failed" in failed
    assert "File too large" in failed or "unexpected pos" in failed  # json's write, or torch.save's own words
    assert other.startswith("CheckpointError") and "step-2 checkpoint failed" in other
    assert f"rank {limited} failed" in other  # the peer names the rank whose log has the cause
    assert [step for step, _ in checkpoints(root)] == [1] and verify(root / "step_000001") is None
    assert not (root / "step_000002.tmp").exists()
