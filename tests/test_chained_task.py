"""The built-in chained task: answers recomputed from the question text, worked lines that check, lengths in
the student's tokenizer, one config value selecting the task for training and evaluation."""

from __future__ import annotations

import re

import pytest

from omniopd.config import ConfigError, DataConfig, load_config
from omniopd.data import DataError, builtin_task, load_split
from omniopd.eval.harness import grade_response


def _answer_from_question(question: str) -> int:
    """An independent reading of the question: parse its clauses and apply them (never the generator's code)."""
    count = int(re.match(r"\w+ has (\d+) ", question).group(1))
    for clause in re.split(r"First, |Then ", question)[1:]:
        if m := re.search(r"buys (\d+) packs with (\d+) ", clause):
            count += int(m[1]) * int(m[2])
        elif m := re.search(r"receives (\d+) more", clause):
            count += int(m[1])
        elif m := re.search(r"gives (\d+) ", clause):
            count -= int(m[1])
        elif m := re.search(r"(doubles|triples)", clause):
            count *= {"doubles": 2, "triples": 3}[m[1]]
        elif m := re.search(r"equally among (\d+) ", clause):
            assert count % int(m[1]) == 0, clause
            count //= int(m[1])
        else:
            raise AssertionError(f"unparsed clause: {clause}")
        assert count > 0, question
    return count


def test_chained_task_is_deterministic_disjoint_and_checkable():
    train, held_out = builtin_task("train", "chained"), builtin_task("eval", "chained")
    assert train == builtin_task("train", "chained") and len(train) == 2048 and len(held_out) == 128
    assert not {p.question for p in train} & {p.question for p in held_out}
    more = builtin_task("train", "chained", size=5000)
    assert more[:2048] == train and not {p.question for p in more} & {p.question for p in held_out}
    steps = []
    for p in train[:400] + held_out:
        assert int(p.answer) == _answer_from_question(p.question), p.question
        lines = [ln for ln in p.solution.splitlines() if ln.startswith("Step ")]
        steps.append(len(lines))
        for expr in re.findall(r"(\d+) ([-+×÷]) (\d+) = (\d+)", p.solution):  # every worked line's arithmetic
            a, op, b, c = int(expr[0]), expr[1], int(expr[2]), int(expr[3])
            assert {"+": a + b, "-": a - b, "×": a * b, "÷": a // b if a % b == 0 else None}[op] == c, expr
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}.")
    assert set(steps) == {3, 4}


def test_grader_accepts_the_worked_solution_and_rejects_a_wrong_answer():
    for p in builtin_task("eval", "chained")[:20]:
        assert grade_response(p, p.solution, "math")[0]
        wrong = p.solution.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{int(p.answer) + 1}}}")
        assert not grade_response(p, wrong, "math")[0]


def test_version_2_keeps_the_arithmetic_small():
    problems = builtin_task("train", "chained") + builtin_task("eval", "chained")
    for p in problems:
        for packs, each in re.findall(r"buys (\d+) packs with (\d+) ", p.question):
            assert 2 <= int(packs) <= 5 and 2 <= int(each) <= 9, p.question
        assert all(2 <= int(d) <= 5 for d in re.findall(r"equally among (\d+) ", p.question)), p.question
        assert "quadruples" not in p.question
    values = [int(n) for p in problems for n in re.findall(r"\d+", p.solution)]
    assert max(values) < 200 and sum(v >= 100 for v in values) < 0.1 * len(values)  # mostly two-digit


def test_a_generator_change_needs_a_new_recipe_version():
    """Builds are cached by recipe version: a changed generator under the same version would be taken for the
    old one. Change the task, bump its recipes' `version` in omniopd/finetune.py, then update the digest here."""
    import hashlib
    import json

    from omniopd.finetune import RECIPES

    pinned = {"addition": ("1", "95f21a37f743fa06"), "chained": ("2", "187d52b62b661961")}
    for task, (version, digest) in pinned.items():
        problems = builtin_task("train", task)[:20] + builtin_task("eval", task)[:20]
        rows = json.dumps([[p.question, p.solution, p.answer] for p in problems])
        assert hashlib.sha256(rows.encode()).hexdigest()[:16] == digest, f"the {task} generator changed"
        assert {RECIPES[f"{kind}:{task}"].version for kind in ("warm", "teacher")} == {version}


def test_worked_solutions_run_120_to_220_student_tokens():
    from transformers import AutoTokenizer

    from omniopd import assets

    tokenizer = AutoTokenizer.from_pretrained(assets.student_path())
    for split in ("train", "eval"):  # every solution of both splits (about a second)
        lengths = sorted(len(tokenizer.encode(p.solution, add_special_tokens=False))
                         for p in builtin_task(split, "chained"))
        assert lengths[0] >= 120 and lengths[-1] <= 220, (split, lengths[0], lengths[-1])
        assert 150 <= lengths[len(lengths) // 2] <= 180, split


def test_one_config_value_selects_the_task_for_training_and_evaluation():
    cfg = load_config(["--data.task=chained"])
    train, held_out = load_split(cfg.data.train, cfg.data, "train"), load_split(cfg.data.eval, cfg.data, "eval")
    assert train == builtin_task("train", "chained") and held_out == builtin_task("eval", "chained")
    default = DataConfig()
    assert load_split("builtin", default, "eval") == builtin_task("eval")  # addition stays the default
    assert all(p.benchmark == "builtin" for p in builtin_task("eval"))
    with pytest.raises(ConfigError, match=r"data\.task='division'"):
        load_config(["--data.task=division"])
    with pytest.raises(DataError, match="builtin task 'division'"):
        builtin_task("train", "division")
    with pytest.raises(DataError, match="split 'test'"):
        builtin_task("test", "chained")
    with pytest.raises(DataError, match="only 2752 distinct carry pairs"):
        builtin_task("train", "addition", size=3000)
