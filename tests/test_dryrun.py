"""The dry run (omniopd/dryrun.py): the teacher's calls and tokens before training, by hand-computed cases, and
against what a real 2-step run with the local teacher then counts (real `python -m omniopd.train` processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.config import load_config
from omniopd.dryrun import calls_per_request, completion_mode, step_figures
from omniopd.rollout.teachers import TeacherRequest
from omniopd.rollout.teachers.chat import render_prompt
from omniopd.rollout.teachers.instruct import instruct_messages

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from omniopd.assets import student_path

    return AutoTokenizer.from_pretrained(student_path("smollm2-135m"))


@pytest.mark.parametrize("args, calls", [([], 1), (["--teacher.kind=openai"], 1), (["--teacher.kind=anthropic"], 10),
                                         (["--teacher.kind=gemini"], 2),
                                         (["--teacher.kind=gemini", "--teacher.candidates_per_call=4"], 3)])
def test_calls_per_request_follow_the_provider(args, calls):
    assert calls_per_request(load_config(args), 10) == calls


@pytest.mark.parametrize("args, mode", [
    ([], "prefill"), (["--teacher.kind=anthropic"], "prefill"), (["--teacher.kind=gemini"], "instruct"),
    (["--teacher.kind=openai"], "instruct"), (["--teacher.kind=openai", "--teacher.base_url=http://127.0.0.1:8/v1"],
                                              "prefill"),
    (["--teacher.kind=anthropic", "--teacher.completion_mode=instruct"], "instruct")])
def test_the_mode_is_the_one_the_teacher_picks(args, mode):
    assert completion_mode(load_config(args)) == mode


def test_step_figures_by_hand(tokenizer):
    requests = [TeacherRequest(CHAT, "12 + 7 = ", n=4, max_tokens=16, temperature=0.7),
                TeacherRequest(CHAT, "", n=4, max_tokens=16, temperature=0.7)]
    remaining = [3, 40]  # the first fork is 3 tokens from its response's end: its continuations end about there
    prompts = [len(tokenizer(render_prompt(tokenizer, CHAT, p), add_special_tokens=False)["input_ids"])
               for p in ("12 + 7 = ", "")]
    cfg = load_config(["--teacher.kind=anthropic", "--teacher.price_in_per_mtok=1", "--teacher.price_out_per_mtok=5"])
    f = step_figures(cfg, requests, remaining, tokenizer).priced(cfg)
    assert (f.requests, f.calls) == (2, 8)
    assert f.input_tokens == 4 * sum(prompts)  # no `n`: every call bills its prompt
    assert f.output_tokens == 4 * 4 + 4 * 16 and f.output_tokens_max == 2 * 4 * 16
    assert f.cost_usd == pytest.approx((f.input_tokens * 1 + f.output_tokens * 5) / 1e6)
    # Gemini in instruct mode: the instruction is in the prompt, one call per 8 candidates, thinking billed.
    cfg = load_config(["--teacher.kind=gemini", "--teacher.thinking_budget=100"])
    g = step_figures(cfg, requests[:1], remaining[:1], tokenizer)
    sent = render_prompt(tokenizer, instruct_messages(CHAT, "12 + 7 = "), "")
    assert g.calls == 1 and g.input_tokens == len(tokenizer(sent, add_special_tokens=False)["input_ids"])
    assert g.output_tokens == 4 * 4 + 100


SMALL = ["--train.batch_size=2", "--generation.n=2", "--generation.max_new_tokens=32", "--audit.chunk_len=4",
         "--audit.num_continuations=2", "--generation.backend=hf", "--teacher.local_backend=hf",
         "--train.eval_before=false", "--train.eval_after=false", "--log.tensorboard=false", "--log.plots=false",
         "--checkpoint.every=0", "--checkpoint.export=false", "--teacher.cache=off", "--train.steps=2",
         "--teacher.price_in_per_mtok=1", "--teacher.price_out_per_mtok=4"]


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "omniopd.train", f"--log.dir={out}", *SMALL, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_the_estimate_is_within_20_percent_of_a_real_two_step_run(tmp_path):
    dry = _run(tmp_path, "--dry-run")
    assert "input tokens" in dry.stdout and "USD" in dry.stdout and "nothing trained" in dry.stdout
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    estimate = json.loads((tmp_path / "teacher_estimate.json").read_text())
    assert estimate["per_run"]["requests"] == 2 * estimate["per_step"]["requests"]
    _run(tmp_path)
    both = json.loads((tmp_path / "summary.json").read_text())["teacher_vs_estimate"]
    print(json.dumps(both))
    for key in ("requests", "input_tokens", "output_tokens"):
        actual, expected = both[key]["actual"], both[key]["estimate"]
        assert abs(expected - actual) <= 0.2 * actual, (key, expected, actual)
    assert both["cost_usd"]["actual"] == pytest.approx(
        (both["input_tokens"]["actual"] * 1 + both["output_tokens"]["actual"] * 4) / 1e6)
