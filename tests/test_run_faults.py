"""When a run goes wrong (issue 28): real `python -m omniopd.train` processes on a tiny random model, each
fault asserted by its exit code, its one line and what is left on disk.

Faults found by the preflight (bad rows, paths, export target, teacher address, lock, damaged or changed
checkpoints) end before any model loads: those processes take about a second. The runs that train share one
tiny model and one finished 3-step run (`base_run`), copied per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import ModelListing, closed_port

from omniopd.checkpoint_files import EXPORT_MARKER, checkpoints, verify
from omniopd.runlock import LOCK_NAME
from omniopd.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEP = ["--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=16", "--audit.chunk_len=4",
        "--audit.num_continuations=2", "--generation.backend=hf", "--teacher.local_backend=hf",
        "--log.tensorboard=false", "--audit.similarity=ned", "--train.eval_before=false",
        "--train.eval_after=false", "--log.plots=false", "--teacher.cache=off", "--checkpoint.every=1",
        "--checkpoint.keep=3"]
QUICK_S = 30  # a fault the preflight finds ends before any model loads (measured ~1 s; slack for a busy host)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _cmd(tiny: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "omniopd.train", f"--model.student={tiny}", f"--teacher.model={tiny}",
            f"--log.dir={out}", *STEP, *args]


def _train(tiny: Path, out: Path, *args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(tiny, out, *args), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit 2, no traceback, and its last stderr line is the one error naming the culprit."""
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in _lines(proc.stderr) if line.startswith("omniopd.train: error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _lines(text: str) -> list[str]:
    """Console lines: the progress bar redraws with carriage returns."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def _steps_once(out: Path) -> list[int]:
    """metrics.jsonl parses line by line and holds each training step once, in order."""
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in rows if "loss/total" in r]
    assert steps == sorted(set(steps)), steps
    return steps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from test_fused_step import tiny_random_student  # the fused-step tests' tiny random Llama

    return tiny_random_student(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def base_run(tiny, tmp_path_factory) -> Path:
    """A finished 3-step run: checkpoints at steps 1, 2, 3 and an export of ours."""
    out = tmp_path_factory.mktemp("base") / "run"
    proc = _train(tiny, out, "--train.steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [s for s, _ in checkpoints(out / "checkpoints")] == [1, 2, 3]
    return out


def _copy(base_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    return out


# ---------------------------------------------------------------------------------------------
# Found before any model loads
BAD_JSONL = {
    "not JSON": ('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n', "line 2", "not valid JSON"),
    "not an object": ('{"problem": "1+1?", "answer": "2"}\n[1, 2]\n', "line 2", "expected a JSON object"),
    "answer missing": ('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n', "line 2", "answer"),
    "answer is an object": ('{"problem": "1+1?", "answer": {"value": 2}}\n', "line 1", "answer"),
    "question not text": ('{"problem": 7, "answer": "2"}\n', "line 1", "question"),
    "duplicate id": ('{"id": 1, "problem": "a?", "answer": "2"}\n{"id": 1, "problem": "b?", "answer": "3"}\n',
                     "line 2", "duplicate id"),
    "id is an object": ('{"id": {"a": 1}, "problem": "a?", "answer": "2"}\n', "line 1", "id"),
    "solution not text": ('{"problem": "a?", "answer": "2", "solution": 5}\n', "line 1", "solution"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_a_bad_jsonl_row_is_refused_before_models_load(tmp_path, case):
    text, where, what = BAD_JSONL[case]
    data = tmp_path / "train.jsonl"
    data.write_text(text)
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = _train(Path("/nonexistent-model-never-loaded"), out, f"--data.train={data}")
    _one_error_line(proc, "data.train", f"{data}:{where}", what)
    assert time.monotonic() - t0 < QUICK_S
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / LOCK_NAME).exists()  # released on the way out


PARQUET_ROWS = {
    "answer is an object": ([{"problem": "1+1?", "answer": {"value": 2}}], "row 0", "answer"),
    "question missing": ([{"problem": "1+1?", "answer": "2"}, {"problem": None, "answer": "3"}], "row 1",
                         "question"),
    "answer not text": ([{"problem": "1+1?", "answer": [[1, 2]]}], "row 0", "answer"),
}


@pytest.mark.parametrize("case", sorted(PARQUET_ROWS))
def test_a_bad_parquet_row_in_the_eval_file_is_refused_before_models_load(tmp_path, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, where, what = PARQUET_ROWS[case]
    data = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    proc = _train(Path("/nonexistent-model-never-loaded"), tmp_path / "run", f"--data.eval={data}")
    _one_error_line(proc, "data.eval", f"{data}:{where}", what)


def test_a_missing_eval_file_and_an_uncreatable_log_dir_are_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    _one_error_line(_train(Path("/x"), tmp_path / "run", f"--data.eval={missing}"), "data.eval", str(missing))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_error_line(_train(Path("/x"), blocker / "run"), f"log.dir={blocker / 'run'}")
    assert blocker.read_text() == "not a folder"


def test_an_export_target_holding_a_user_file_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)
    (out / "export" / "notes.txt").write_text("mine")
    _one_error_line(_train(Path("/x"), out, "--checkpoint.export=true"), str(out / "export"), "--export.overwrite")
    assert (out / "export" / "notes.txt").read_text() == "mine"
    assert not (out / "checkpoints").exists()


def test_a_teacher_address_that_does_not_answer_or_lacks_the_model_is_refused(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    t0 = time.monotonic()
    proc = _train(Path("/x"), tmp_path / "a", "--teacher.kind=openai", f"--teacher.base_url={url}")
    _one_error_line(proc, f"teacher.base_url={url}", "no answer")
    assert time.monotonic() - t0 < QUICK_S

    # an OpenAI-compatible server's free model listing, serving one model
    server = ModelListing("/v1/models", {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
    try:
        url = f"{server.url}/v1"
        proc = _train(Path("/x"), tmp_path / "b", "--teacher.kind=openai", f"--teacher.base_url={url}",
                      "--teacher.model=other-model")
        _one_error_line(proc, "teacher.model='other-model'", "served-model")
    finally:
        server.close()


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "since": "earlier"}))
    _one_error_line(_train(Path("/x"), out), "elsewhere.example", f"delete {out / LOCK_NAME}")
    assert json.loads((out / LOCK_NAME).read_text())["host"] == "elsewhere.example"  # not ours to remove


# ---------------------------------------------------------------------------------------------
# Runs that train
def _wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    deadline = time.time() + 600
    while True:
        path = out / "metrics.jsonl"
        if path.is_file() and any(r.get("step") == step and "loss/total" in r for r in _rows(path)):
            return
        assert proc.poll() is None and time.time() < deadline, f"run ended before step {step}"
        time.sleep(0.1)


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            rows.append(json.loads(line))
    return rows


def test_two_trainers_one_folder_then_kill_9_then_resume_takes_the_stale_lock(tiny, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_cmd(tiny, out, "--train.steps=60", "--checkpoint.export=false"), cwd=REPO,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(first, out, 2)
        second = _train(tiny, out, "--train.steps=60")
        _one_error_line(second, "another trainer is using this run folder", f"pid {first.pid}", socket.gethostname())
    finally:
        first.send_signal(signal.SIGKILL)  # mid-run: no chance to save or unlock
        first.wait()
    last = checkpoints(out / "checkpoints")[-1][0]
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "loss/tot')  # a half-written last line, as a kill mid-write leaves it
    proc = _train(tiny, out, f"--train.steps={last + 1}", "--checkpoint.export=false", "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"took over the run folder's lock from pid {first.pid} (no longer running" in proc.stdout
    assert _steps_once(out) == list(range(1, last + 2))
    assert all(verify(p) is None for _, p in checkpoints(out / "checkpoints"))
    assert not (out / LOCK_NAME).exists()


def test_damaged_checkpoints_are_skipped_then_an_old_one_resumes_with_a_warning(tiny, base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    ckpt = out / "checkpoints"
    shard = next((ckpt / "step_000003").glob("*.distcp"))
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)  # a truncated shard
    (ckpt / "step_000002" / ".metadata").write_bytes(b"")  # an emptied metadata file
    for name in ("manifest.json", "config.json"):  # step 1 as a checkpoint written before manifests existed
        (ckpt / "step_000001" / name).unlink()
    partial = ckpt / "step_000004.tmp"  # what a kill -9 during a save leaves
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half a shard")
    proc = _train(tiny, out, "--train.steps=2", "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"skipping damaged checkpoint {ckpt / 'step_000003'}: {shard.name} is" in proc.stdout
    assert f"skipping damaged checkpoint {ckpt / 'step_000002'}: .metadata is 0 bytes" in proc.stdout
    assert "could not be compared" in proc.stdout
    assert f"resumed from {ckpt / 'step_000001'} at step 1" in proc.stdout + proc.stderr
    assert _steps_once(out) == [1, 2]
    assert verify(ckpt / "step_000002") is None  # written again, complete
    assert [s for s, _ in checkpoints(ckpt)] == [1, 2, 3]  # the partial save was never taken for a checkpoint


@pytest.mark.parametrize("damage", ["trainer state truncated", "file missing"])
def test_no_intact_checkpoint_fails_naming_the_path_and_reason(base_run, tmp_path, damage):
    out = _copy(base_run, tmp_path)
    ckpt = out / "checkpoints"
    for _, path in checkpoints(ckpt):
        state = path / "trainer_state_rank0.pt"
        if damage == "file missing":
            state.unlink()
        else:
            state.write_bytes(state.read_bytes()[:100])
    before = (out / "metrics.jsonl").read_text()
    proc = _train(Path("/x"), out, "--train.steps=5", "--resume")
    reason = "trainer_state_rank0.pt is missing" if damage == "file missing" else "trainer_state_rank0.pt is 100 bytes"
    _one_error_line(proc, f"no intact checkpoint under {ckpt}", f"{ckpt / 'step_000003'}: {reason}")
    assert (out / "metrics.jsonl").read_text() == before


def test_a_changed_unsafe_key_refuses_naming_both_values(base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    saved = json.loads((out / "checkpoints" / "step_000003" / "config.json").read_text())["audit"]["num_chunks"]
    _one_error_line(_train(Path("/x"), out, "--resume", "--audit.num_chunks=1"), "audit.num_chunks",
                    f"was {saved} in the checkpoint and is 1 now")
    _one_error_line(_train(Path("/other-student"), out, "--resume"), "model.student", "/other-student")


def test_a_changed_learning_rate_takes_effect_and_export_twice_works(tiny, base_run, tmp_path):
    """The restored optimizer would bring back the saved rate: the new one is applied, printed and logged;
    the run exports again over the earlier export of ours."""
    out = _copy(base_run, tmp_path)
    proc = _train(tiny, out, "--train.steps=4", "--optim.lr=0.001", "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "applying a changed setting: optim.lr: 1e-05 -> 0.001" in proc.stdout
    assert "applying a changed setting: train.steps: 3 -> 4" in proc.stdout
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/lr" in r]
    assert {r["step"]: r["train/lr"] for r in rows} == pytest.approx({1: 1e-5, 2: 1e-5, 3: 1e-5, 4: 1e-3})
    marker = json.loads((out / "export" / EXPORT_MARKER).read_text())
    assert "model.safetensors" in marker["files"]
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]  # no temporary folder left


def test_a_file_size_limit_during_a_save_keeps_the_earlier_checkpoints(tiny, base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    limit = 1 << 20  # below one shard of the tiny model's optimizer state

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _train(tiny, out, "--train.steps=5", "--checkpoint.export=false", "--resume", preexec_fn=cap_file_size)
    _one_error_line(proc, f"{out / 'checkpoints' / 'step_000004.tmp'}", "earlier checkpoints are untouched")
    found = checkpoints(out / "checkpoints")
    assert [s for s, _ in found] == [1, 2, 3] and all(verify(p) is None for _, p in found)
    assert not (out / "checkpoints" / "step_000004.tmp").exists()
    assert _steps_once(out) == [1, 2, 3, 4]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_step_checkpoints_and_exits_with_its_code(tiny, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny, out, "--train.steps=60", "--checkpoint.every=0"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, out, 1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, stderr[-4000:]
    assert "Traceback" not in stderr
    assert _lines(stderr)[-1] == f"omniopd.train: error: stopped by {sig.name} after saving a checkpoint (continue " \
                                 "with --resume)"
    [(step, path)] = checkpoints(out / "checkpoints")
    assert verify(path) is None and _steps_once(out) == list(range(1, step + 1))
    assert not (out / LOCK_NAME).exists()


def test_a_second_stop_signal_stops_at_once_without_a_checkpoint(tiny, tmp_path):
    """Long responses keep step 2 in flight for seconds: the second SIGTERM (past the echo window) lands in it."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny, out, "--train.steps=60", "--checkpoint.every=0",
                                 "--generation.max_new_tokens=1024"),
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, out, 1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.2)  # past the echo window (ECHO_S = 1 s)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    assert "Traceback" not in stderr
    assert _lines(stderr)[-1].startswith("omniopd.train: error: stopped at once by a second SIGTERM")
    assert checkpoints(out / "checkpoints") == [] and _steps_once(out) == [1]
    assert not (out / LOCK_NAME).exists()


def test_a_fresh_start_in_a_folder_holding_a_run_is_refused_and_touches_nothing(base_run, tmp_path):
    """Without --resume the new run would append to metrics.jsonl and prune checkpoints by step number."""
    out = _copy(base_run, tmp_path)
    before = (out / "metrics.jsonl").read_text()
    proc = _train(Path("/x"), out, "--train.steps=3", timeout=QUICK_S)
    _one_error_line(proc, f"log.dir={out}", "--resume", "--checkpoint.resume=true", "new --log.dir")
    assert [s for s, _ in checkpoints(out / "checkpoints")] == [1, 2, 3]
    assert (out / "metrics.jsonl").read_text() == before


def test_a_stop_signal_right_after_a_periodic_save_does_not_save_that_step_again(tiny, tmp_path):
    """With a checkpoint every step, the stop request is seen right after a periodic save: that checkpoint is
    kept as it is (saving it again deleted the good copy before the new one was verified)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny, out, "--train.steps=60", "--checkpoint.every=1", "--checkpoint.keep=2"),
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, out, 1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    found = checkpoints(out / "checkpoints")
    step = found[-1][0]
    assert f"step {step} is checkpointed already" in stdout, stdout[-2000:]
    assert all(verify(p) is None for _, p in found) and _steps_once(out) == list(range(1, step + 1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [p.name for _, p in found]  # no .old / .tmp


def test_a_newest_checkpoint_that_verifies_but_does_not_load_falls_back_to_the_one_before(tiny, base_run, tmp_path):
    """Shard contents are checked by size only: zeroed bytes of the right length pass the manifest and fail to
    load. The run says which checkpoint it skipped and why, resumes from step 2, and logs step 3 once."""
    out = _copy(base_run, tmp_path)
    ckpt = out / "checkpoints"
    for shard in (ckpt / "step_000003").glob("*.distcp"):
        shard.write_bytes(bytes(shard.stat().st_size))
    assert verify(ckpt / "step_000003") is None
    proc = _train(tiny, out, "--train.steps=3", "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = proc.stdout + proc.stderr
    assert f"resume: skipping checkpoint {ckpt / 'step_000003'}: cannot restore this checkpoint" in said, said[-3000:]
    assert f"resumed from {ckpt / 'step_000002'} at step 2" in said
    assert _steps_once(out) == [1, 2, 3]
    assert [s for s, _ in checkpoints(ckpt)] == [1, 2, 3] and verify(ckpt / "step_000003") is None


def test_a_stop_signal_while_the_models_load_ends_with_its_code_and_one_line(tiny, tmp_path):
    """The signal lands after the preflight took the lock, while torch and the models load: the run ends with
    128 + SIGTERM and one line saying no checkpoint exists yet, and releases the lock."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tiny, out, "--train.steps=3"), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + QUICK_S
    while not (out / LOCK_NAME).exists():
        assert proc.poll() is None and time.time() < deadline, "the run never took its lock"
        time.sleep(0.01)
    time.sleep(0.2)  # past the preflight, into the imports and model loads (seconds)
    assert not (out / "metrics.jsonl").exists() or not _rows(out / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    assert "Traceback" not in stderr
    assert _lines(stderr)[-1] == "omniopd.train: error: stopped by SIGTERM while the models loaded: nothing was " \
                                 "trained and no checkpoint exists yet"
    assert checkpoints(out / "checkpoints") == [] and not (out / LOCK_NAME).exists()


def test_the_dry_run_checks_the_data_first_and_runs_on_rank_0_only(tmp_path):
    """Bad rows are named before any model loads (the student here does not exist); under torchrun a rank
    other than 0 exits 0 at once without estimating (or loading anything)."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": {"value": 2}}\n')
    out = tmp_path / "run"
    proc = _train(Path("/nonexistent-model-never-loaded"), out, f"--data.train={data}", "--dry-run", timeout=QUICK_S)
    _one_error_line(proc, "data.train", f"{data}:line 1", "answer")
    t0 = time.monotonic()
    other_rank = subprocess.run(_cmd(Path("/nonexistent-model-never-loaded"), out, "--dry-run"), cwd=REPO,
                                env=dict(_env(), RANK="1", WORLD_SIZE="2"), capture_output=True, text=True,
                                timeout=QUICK_S)
    assert other_rank.returncode == 0, other_rank.stderr[-3000:]
    assert time.monotonic() - t0 < QUICK_S and other_rank.stdout == "" and "Traceback" not in other_rank.stderr
    assert not (out / "teacher_estimate.json").exists()
