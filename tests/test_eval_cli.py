"""`python -m omniopd.eval`: grading saved samples, and the bundled student end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.eval.__main__ import main

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
MATH = FIXTURES / "math500_small.jsonl"
CODE = FIXTURES / "code_small.jsonl"


def write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def read_out(out: Path) -> tuple[list[dict], dict]:
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return samples, json.loads((out / "summary.json").read_text())


def test_grade_math_samples(tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl", [
        {"problem_id": "test/algebra/722.json", "response": "99^2+99+1 = 9801+100 = \\boxed{9901}"},
        {"problem_id": "test/algebra/722.json", "response": "I think it is \\boxed{9801}"},
        {"problem_id": "test/algebra/1004.json", "response": "2^8 = 2^{2x}, so x = 4.\n#### 4"},
        {"problem_id": "test/algebra/1004.json", "response": "no idea"},
        {"problem_id": "test/prealgebra/1747.json", "response": "Any power of one is one: $\\boxed{1}$."},
    ])
    assert main(["--grade", str(samples), "--data", str(MATH), "--out", str(tmp_path / "out")]) == 0
    graded, summary = read_out(tmp_path / "out")
    assert [s["correct"] for s in graded] == [True, False, True, False, True]
    assert [s["verdict"] for s in graded] == ["9901", "9801", "4", "", "1"]
    entry = summary["benchmarks"]["math500_small"]
    assert (entry["problems"], entry["samples"], entry["k"]) == (3, 5, 1)  # 1747 has one sample only
    assert entry["pass@1"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    table = capsys.readouterr().out
    assert "math500_small" in table and "66.7%" in table


def test_grade_code_samples_pass_at_k(tmp_path):
    good_sum = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad_sum = "```python\nprint(0)\n```"
    good_rev = "```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```"
    good_max = "```python\ninput()\nprint(max(map(int, input().split())))\n```"
    samples = write_samples(tmp_path / "s.jsonl", [
        {"problem_id": "sum_two", "response": good_sum}, {"problem_id": "sum_two", "response": bad_sum},
        {"problem_id": "reverse_words", "response": "no code"},
        {"problem_id": "reverse_words", "response": good_rev},
        {"problem_id": "max_of_list", "response": bad_sum}, {"problem_id": "max_of_list", "response": bad_sum},
    ])
    assert main(["--grade", str(samples), "--suite", "code", "--data", str(CODE),
                 "--out", str(tmp_path / "out"), "--cpu-s", "2"]) == 0
    graded, summary = read_out(tmp_path / "out")
    assert [(s["correct"], s["verdict"]) for s in graded] == [
        (True, "passed"), (False, "wrong_answer"), (False, "no_code"), (True, "passed"),
        (False, "wrong_answer"), (False, "wrong_answer")]
    entry = summary["benchmarks"]["code_small"]
    assert entry["k"] == 2 and entry["pass@1"] == pytest.approx(1 / 3) and entry["pass@2"] == pytest.approx(2 / 3)
    samples = write_samples(tmp_path / "s2.jsonl", [{"problem_id": "max_of_list", "response": good_max}])
    assert main(["--grade", str(samples), "--suite", "code", "--data", str(CODE), "--out", str(tmp_path / "o2")]) == 0
    assert read_out(tmp_path / "o2")[0][0]["correct"] is True


@pytest.mark.parametrize("line,message", [
    ('{"problem_id": "nope", "response": "1"}', "s.jsonl:line 2: problem id 'nope' is in none of the data files"),
    ('{"response": "1"}', "s.jsonl:line 2: needs 'problem_id'"),
    ('{"problem_id": "test/algebra/722.json", "response": "1"', "s.jsonl:line 2: not valid JSON"),
])
def test_grade_bad_samples_name_the_line(tmp_path, capsys, line, message):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"problem_id": "test/algebra/722.json", "response": "1"}\n' + line + "\n")
    assert main(["--grade", str(samples), "--data", str(MATH), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_eval_bundled_student_end_to_end(tmp_path):
    """The real student (HF backend) on two bundled MATH500 problems, then the same samples re-graded."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "omniopd.eval", "--model", "smollm2-135m", "--suite", "math", "--data", str(MATH),
           "--limit", "2", "--max-new-tokens", "24", "--backend", "hf", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "math500_small" in run.stdout and "pass@1" in run.stdout
    samples, summary = read_out(out)
    assert [s["problem_id"] for s in samples] == ["test/algebra/722.json", "test/algebra/1004.json"]
    for s in samples:
        assert s["response"].strip() and 0 < s["num_tokens"] <= 24
        assert s["finish_reason"] in ("stop", "length") and isinstance(s["correct"], bool)
        assert s["reference"] in ("9901", "4")
    entry = summary["benchmarks"]["math500_small"]
    assert entry["problems"] == 2 and entry["pass@1"] == sum(s["correct"] for s in samples) / 2
    # The written samples are valid --grade input and get the same verdicts.
    assert main(["--grade", str(out / "samples.jsonl"), "--data", str(MATH), "--out", str(tmp_path / "re")]) == 0
    regraded, _ = read_out(tmp_path / "re")
    assert [(s["correct"], s["verdict"]) for s in regraded] == [(s["correct"], s["verdict"]) for s in samples]


@pytest.mark.slow
@pytest.mark.vllm
def test_eval_bundled_student_vllm(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "omniopd.eval", "--model", "smollm2-135m", "--data", str(MATH), "--limit", "2",
           "--k", "2", "--max-new-tokens", "24", "--backend", "vllm", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "backend=vllm" in run.stdout
    samples, summary = read_out(out)
    assert len(samples) == 4 and [s["sample_index"] for s in samples] == [0, 1, 0, 1]
    assert summary["benchmarks"]["math500_small"]["k"] == 2
    assert all(0 < s["num_tokens"] <= 24 for s in samples)


class ScriptedGenerator:
    """A stand-in for a StudentGenerator: replies from a table, records the prompts it was given."""

    backend = "scripted"

    def __init__(self, replies: dict[str, list[str]]):
        self.replies, self.prompts = replies, []

    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, stop=None):
        from omniopd.rollout.student.base import Sample

        self.prompts += prompts
        return [[Sample([], [1, 2, 3], text, "stop", [0.0] * 3) for text in self.replies[p[-1]["content"]][:n]]
                for p in prompts]


def test_evaluate_api():
    from omniopd.eval import evaluate, load_problems

    problems = load_problems(MATH, "math", limit=2)
    gen = ScriptedGenerator({problems[0].question: ["\\boxed{9901}", "\\boxed{1}"],
                             problems[1].question: ["x = \\boxed{4}", "x=\\boxed{4}"]})
    summary, records = evaluate(gen, problems, "math", k=2, temperature=0.7)
    assert gen.prompts[0][0] == {"role": "system", "content": "Solve the problem. Put the final answer in \\boxed{}."}
    assert [r["correct"] for r in records] == [True, False, True, True]
    entry = summary["math500_small"]
    assert entry["pass@1"] == pytest.approx(0.75) and entry["pass@2"] == 1.0 and entry["mean_tokens"] == 3


GOOD_ROW = b'{"problem_id": "test/algebra/722.json", "response": "\\\\boxed{9901}"}\n'


@pytest.mark.parametrize("bad,message", [
    (b'{"problem_id": "test/algebra/722.json", "benchmark": ["math500_small"], "response": "1"}',
     "s.jsonl:line 2: 'benchmark' must be a string, got list"),
    (b'{"problem_id": ["a"], "response": "1"}', "s.jsonl:line 2: 'problem_id' must be a string or an integer"),
    (b'{"problem_id": true, "response": "1"}', "s.jsonl:line 2: 'problem_id' must be a string or an integer"),
    (b'{"problem_id": "test/algebra/722.json", "response": {"text": "1"}}',
     "s.jsonl:line 2: 'response' must be a string, got dict"),
    (b'{"problem_id": "test/algebra/722.json", "response": "caf\xe9 \\\\boxed{1}"}',
     "s.jsonl:line 2: not valid UTF-8 (byte 56 of the line)"),
    (b'{"problem_id": "test/algebra/722.json", "response": "\\\\boxed{9901} \\ud800"}',
     "s.jsonl:line 2: field 'response' holds text that is not encodable"),
    (b'{"problem_id": "test/algebra/722.json", "response": "1", "note": "\\udfff"}',
     "s.jsonl:line 2: field 'note' holds text that is not encodable"),
])
def test_grade_bad_fields_are_errors_naming_the_line(tmp_path, capsys, bad, message):
    """Each of these crashed with a traceback on main (a list benchmark: unhashable; bad UTF-8:
    UnicodeDecodeError; a lone surrogate: UnicodeEncodeError after grading, with samples.jsonl half
    written and no summary.json). Now: exit 2, the line named, nothing written."""
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(GOOD_ROW + bad + b"\n")
    out = tmp_path / "out"
    assert main(["--grade", str(samples), "--data", str(MATH), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_outputs_are_replaced_atomically(tmp_path, monkeypatch):
    """A failure while writing leaves the previous outputs whole (main wrote samples.jsonl in place)."""
    from omniopd.eval import harness

    samples = tmp_path / "s.jsonl"
    samples.write_bytes(GOOD_ROW)
    out = tmp_path / "out"
    assert main(["--grade", str(samples), "--data", str(MATH), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = harness.os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("summary.json"):
            raise OSError("disk full (simulated at the rename)")
        real_replace(src, dst)

    monkeypatch.setattr(harness.os, "replace", failing_replace)
    samples.write_bytes(GOOD_ROW * 3)
    with pytest.raises(OSError, match="disk full"):
        main(["--grade", str(samples), "--data", str(MATH), "--out", str(out)])
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == {"samples.jsonl", "summary.json"}  # no temporary file left behind
    assert after["summary.json"] == before["summary.json"]
    assert len(after["samples.jsonl"].splitlines()) == 3  # the new file is whole, not half written
    assert all(json.loads(line)["correct"] for line in after["samples.jsonl"].splitlines())


def test_generated_text_with_a_lone_surrogate_is_still_written(tmp_path):
    from omniopd.eval.harness import write_outputs

    out = write_outputs(tmp_path / "o", [{"response": "x \ud800 y", "correct": False}], {"ok": 1})
    assert json.loads((out / "samples.jsonl").read_text(encoding="utf-8"))["response"] == "x \ud800 y"


def test_require_isolation_refuses_when_a_layer_is_missing(tmp_path, capsys, monkeypatch):
    """A host without `unshare` (PATH without it, for real): a warning and a record by default, exit 2
    before any grading with --require-isolation. Main had no such flag and fell back silently."""
    from omniopd.eval import sandbox

    samples = write_samples(tmp_path / "s.jsonl", [
        {"problem_id": "sum_two", "response": "```python\na, b = map(int, input().split())\nprint(a + b)\n```"}])
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._unshare_prefix.cache_clear()
    try:
        args = ["--grade", str(samples), "--suite", "code", "--data", str(CODE), "--cpu-s", "2"]
        assert main([*args, "--out", str(tmp_path / "refused"), "--require-isolation"]) == 2
        err = capsys.readouterr().err
        assert "error: sandbox isolation required but unavailable" in err and "namespaces (unavailable" in err
        assert not (tmp_path / "refused").exists()
        assert main([*args, "--out", str(tmp_path / "warned")]) == 0
        assert "warning: sandbox layers unavailable here: namespaces" in capsys.readouterr().err
        graded, summary = read_out(tmp_path / "warned")
        assert graded[0]["correct"] is True
        assert summary["sandbox"]["namespaces"].startswith("unavailable")
    finally:
        sandbox._unshare_prefix.cache_clear()


@pytest.mark.skipif(os.geteuid() != 0, reason="every layer, the uid drop included, needs a root grader")
def test_require_isolation_runs_when_every_layer_is_there(tmp_path):
    from omniopd.eval.sandbox import isolation_available

    if any(v != "on" for v in isolation_available().values()):
        pytest.skip(f"this host lacks a layer: {isolation_available()}")
    samples = write_samples(tmp_path / "s.jsonl", [
        {"problem_id": "sum_two", "response": "```python\na, b = map(int, input().split())\nprint(a + b)\n```"}])
    assert main(["--grade", str(samples), "--suite", "code", "--data", str(CODE), "--out", str(tmp_path / "o"),
                 "--require-isolation", "--cpu-s", "2"]) == 0
    graded, summary = read_out(tmp_path / "o")
    assert graded[0]["correct"] is True
    assert set(summary["sandbox"].values()) == {"on"}
