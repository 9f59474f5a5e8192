"""The trainer end to end on the real bundled student, teacher and embedder (CPU, small shapes).

Every run here is a real `python -m omniopd.train` / `torchrun` process: same code path as a user's. Each one
runs on one thread, so runs whose results do not depend on each other run two at a time (CI has two cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from omniopd.runlog import read_metrics

# Small but complete: 2 prompts x 2 samples, 16-token responses, 2 forks of 4 tokens, N=2.
TINY = ["--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=16", "--audit.chunk_len=4",
        "--audit.num_continuations=2", "--train.eval_size=2", "--generation.backend=hf", "--log.tensorboard=false"]
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _launch(out: Path, *args: str, launcher: list[str] | None = None) -> subprocess.Popen:
    """Start a run; its stdout and stderr go to files beside <out> (not pipes nobody reads while another run is
    awaited)."""
    cmd = (launcher or [sys.executable, "-m"]) + ["omniopd.train", f"--log.dir={out}", *TINY, *args]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(_log(out, "stdout"), "w") as stdout, open(_log(out, "stderr"), "w") as stderr:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=stdout, stderr=stderr, text=True)


def _log(out: Path, stream: str) -> Path:
    return out.with_name(f"{out.name}.{stream}")


def _finish(proc: subprocess.Popen, out: Path, timeout: int = 900) -> tuple[int, str, str]:
    """Wait for a run started by `_launch` (killed past `timeout`): exit code, stdout, stderr."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, _log(out, "stdout").read_text(), _log(out, "stderr").read_text()


def _metrics(proc: subprocess.Popen, out: Path, timeout: int = 900) -> list[dict]:
    """Wait for a run started by `_launch`; it must succeed. Its metrics.jsonl rows."""
    returncode, stdout, stderr = _finish(proc, out, timeout)
    assert returncode == 0, f"{' '.join(proc.args)}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return read_metrics(out / "metrics.jsonl")


def _train(out: Path, *args: str, launcher: list[str] | None = None, timeout: int = 900) -> list[dict]:
    return _metrics(_launch(out, *args, launcher=launcher), out, timeout)


def _step(rows: list[dict], step: int) -> dict:
    return next(r for r in rows if r["step"] == step)


def test_packed_response_logits_match_unpadded_forwards():
    """Left-padded prompts + right-padded responses: column t is the distribution that produced token t."""
    import torch

    from omniopd import assets
    from omniopd.batch import pack, response_logits
    from omniopd.data import Problem
    from omniopd.rollout.student import Sample

    model, tok = assets.load_student()
    rows = [([1, 2, 3, 4, 5], [6, 7, 8]), ([9, 10], [11, 12, 13, 14, 15])]
    samples = [Sample(p, r, "", "stop", [0.0] * len(r)) for p, r in rows]
    batch = pack([Problem("a", "q", "1")] * 2, samples, tok.pad_token_id, torch.device("cpu"))
    assert batch.response_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    with torch.no_grad():
        got = response_logits(model, batch)
        for i, (prompt, response) in enumerate(rows):
            alone = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]
            # fp32, but masked (padded) vs unmasked attention kernels: ~4e-3 on logits of size ~20; a
            # one-column misalignment would be off by whole units
            torch.testing.assert_close(got[i, :len(response)], alone, atol=1e-2, rtol=0)
            assert (got[i, :len(response)].argmax(-1) == alone.argmax(-1)).all()


def test_two_ranks_match_one_rank(tmp_path):
    """torchrun (gloo, FSDP2) on 2 ranks: same first-step loss as 1 rank on the same data.

    Greedy rollouts and seeded teacher requests make both runs see the same sequences; the remaining
    difference is float32 summation order across shards and ranks.
    """
    args = ["--train.steps=1", "--generation.temperature=0", "--train.eval_before=false",
            "--train.eval_after=false", "--checkpoint.export=false", "--log.plots=false"]
    one_rank = _launch(tmp_path / "one", *args)  # beside the two ranks: neither result depends on the other
    two = _step(_train(tmp_path / "two", *args, launcher=[sys.executable, "-m", "torch.distributed.run",
                                                           "--nproc_per_node=2", "-m"], timeout=1200), 1)
    one = _step(_metrics(one_rank, tmp_path / "one"), 1)
    assert two["audit/chunks_audited"] == one["audit/chunks_audited"]
    assert two["loss/total"] == pytest.approx(one["loss/total"], rel=1e-3, abs=1e-4)
    assert two["train/grad_norm"] == pytest.approx(one["train/grad_norm"], rel=1e-3)


def test_kill_and_resume_reproduces_the_run(tmp_path):
    args = ["--train.steps=3", "--checkpoint.every=1", "--checkpoint.keep=3", "--train.eval_before=false",
            "--train.eval_after=false", "--checkpoint.export=false", "--log.plots=false"]
    straight_run = _launch(tmp_path / "straight", *args)  # beside the killed run: the two share nothing
    try:
        out = tmp_path / "killed"
        proc = _launch(out, *args)
        deadline = time.time() + 600
        while not (out / "checkpoints" / "step_000001").is_dir():
            assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # mid step 2: no chance to save
        proc.wait()
        resumed = _train(out, *args, "--resume")
    except BaseException:
        straight_run.kill()
        straight_run.wait()
        raise
    straight = _metrics(straight_run, tmp_path / "straight")
    for step in (2, 3):
        a, b = _step(straight, step), _step(resumed, step)
        for key in ("loss/total", "audit/pi_hat_mean", "rollout/reward_mean", "train/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (step, key)


# ---------------------------------------------------------------------------------------------
# The runs below share nothing: all start with the first test that asks for one and run two at a time.
OBJECTIVES = ["omniopd", "opd", "sft", "rl"]
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM]
ONE_STEP = ["--train.steps=1", "--train.eval_before=false", "--train.eval_after=false", "--checkpoint.export=false",
            "--log.plots=false"]


class Run:
    """A run of the pool: its folder, and `result()` waits for what its job returns."""

    def __init__(self, folder: Path, future: Future):
        self.folder, self.future = folder, future

    def result(self):
        return self.future.result()


def _interrupt(out: Path, sig: signal.Signals) -> tuple[int, str]:
    """A 20-step run sent `sig` once its step 1 is logged: its exit code and console (stdout, then stderr)."""
    proc = _launch(out, "--train.steps=20", "--checkpoint.every=0", "--train.eval_before=false")
    try:
        deadline = time.time() + 600
        while not (out / "metrics.jsonl").is_file() or '"step": 1' not in (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.time() < deadline, "run ended before its first step"
            time.sleep(0.2)
        proc.send_signal(sig)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    returncode, stdout, stderr = _finish(proc, out, timeout=600)
    return returncode, stdout + stderr


def _blow_up(out: Path) -> tuple[int, str]:
    """A learning rate that makes the weights non-finite: exit code and stderr."""
    returncode, _, stderr = _finish(_launch(out, "--train.steps=6", "--optim.lr=1e30", "--optim.grad_clip=0",
                                            "--train.max_nonfinite_steps=2", "--train.eval_before=false",
                                            "--objective.name=sft", "--generation.temperature=0"), out)
    return returncode, stderr


RUN_OF_TEST = {"test_default_run_writes_everything": "default",
               "test_nonfinite_steps_are_skipped_then_stop": "nonfinite"}


def _selected_runs(request: pytest.FixtureRequest) -> set[str]:
    """The runs the selected tests of this module wait for: a test run alone starts only its own."""
    names = set()
    for item in request.session.items:
        if item.module is request.module and "runs" in item.fixturenames:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            if "objective" in params:
                names.add(params["objective"])
            elif "sig" in params:
                names.add(params["sig"].name)
            else:
                names.add(RUN_OF_TEST[item.originalname])
    return names


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The selected tests' runs, two at a time (each is one thread; CI has two cores), longest first; each test
    waits for its own and reports its own failure."""
    root = tmp_path_factory.mktemp("runs")
    jobs = [("default", _train, ("--train.steps=2", "--checkpoint.every=1", "--generation.backend=auto",  # vLLM
                                 "--train.eval_every=1"))]
    jobs += [(sig.name, _interrupt, (sig,)) for sig in STOP_SIGNALS]
    jobs += [("nonfinite", _blow_up, ())]
    jobs += [(o, _train, (f"--objective.name={o}", *ONE_STEP)) for o in OBJECTIVES]
    wanted = _selected_runs(request)
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: Run(root / name, pool.submit(job, root / name, *args)) for name, job, args in jobs
               if name in wanted}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_trains_a_step(runs, objective):
    m = _step(runs[objective].result(), 1)
    assert m["loss/total"] is not None
    if objective == "rl" and m["rl/advantage_std"] == 0:
        # every group scored alike and KL(ref || student) is 0 at the first step: no signal, no gradient
        assert m["train/grad_norm"] == 0
    else:
        assert m["train/grad_norm"] > 0  # a real gradient reached the weights
    # sft trains on the teacher's responses: the student samples nothing, the teacher writes instead
    for phase in ("teacher" if objective == "sft" else "generate", "forward", "loss", "backward_step", "swap"):
        assert m[f"time/{phase}_s"] >= 0
    assert ("time/generate_s" in m) == (objective != "sft")
    if objective == "omniopd":
        assert m["audit/chunks_audited"] + m["audit/chunks_dropped"] >= 1
        assert 0 <= m["audit/pi_hat_mean"] <= 1
        # forks sit where the student is least sure
        assert m["audit/entropy_anchor_mean"] > m["audit/entropy_overall_mean"]


def test_default_run_writes_everything(runs):
    """The built-in default's outputs: logs, checkpoint, HF export that loads, plots, eval before/after."""
    out = runs["default"].folder
    rows = runs["default"].result()
    assert [r["step"] for r in rows if "loss/total" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 1, 2]  # before, every step, after
    assert {p.name for p in out.glob("eval_*.jsonl")} == {"eval_before.jsonl", "eval_step1.jsonl",
                                                          "eval_after.jsonl"}
    assert (out / "curves.png").stat().st_size > 10_000
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_000001", "step_000002"]
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out / "export")
    base = AutoModelForCausalLM.from_pretrained(_student_path())
    diff = max((a - b).abs().max().item() for a, b in zip(exported.parameters(), base.parameters()))
    assert diff > 0  # the export holds the trained weights, not the base ones


def _student_path() -> str:
    from omniopd import assets

    return assets.student_path()


def test_nonfinite_steps_are_skipped_then_stop(runs):
    """A learning rate that blows the weights up: the non-finite steps are skipped, then the run stops."""
    returncode, stderr = runs["nonfinite"].result()
    assert returncode != 0 and "non-finite steps: stopping" in stderr
    rows = read_metrics(runs["nonfinite"].folder / "metrics.jsonl")
    assert sum(r.get("train/skipped_nonfinite") == 1.0 for r in rows) >= 1


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_interrupt_saves_a_checkpoint_first(runs, sig):
    """Ctrl-C (SIGINT) or SIGTERM mid-run: the step in flight finishes, the run saves, then exits non-zero.

    Once a SIGINT raised as KeyboardInterrupt mid-step was swallowed (it landed in a finalizer) and the run
    trained on to the end with exit 0: signals are now requests checked between steps."""
    returncode, out = runs[sig.name].result()
    assert returncode != 0, out[-3000:]
    assert f"{sig.name} received: stopping after this step" in out
    assert "saving a checkpoint before exiting" in out
    saved = [p.name for p in (runs[sig.name].folder / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("step_0000")  # step 1 or 2, whichever was running


def test_a_second_stop_signal_interrupts_at_once_but_an_echo_does_not():
    """torchrun forwards the terminal's Ctrl-C to ranks that got it already: a repeat within ECHO_S is the same
    request; a later one raises KeyboardInterrupt where the run is. Leaving restores the old handlers."""
    from omniopd.signals import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # the echo
        stop._first -= 2 * stop.ECHO_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before
