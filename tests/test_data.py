"""Prompt data: the built-in task, file loaders with named errors, the resumable stream."""

import dataclasses
import json

import pytest

from omniopd.config import DataConfig
from omniopd.data import DataError, Problem, PromptStream, builtin_task, load_problems, load_split, teacher_messages


def test_builtin_task_is_deterministic_checkable_and_disjoint():
    train, held_out = builtin_task("train"), builtin_task("eval")
    assert train == builtin_task("train") and len(train) == 512 and len(held_out) == 128
    assert not {p.question for p in train} & {p.question for p in held_out}
    for p in train[:50]:
        a, b = (int(w) for w in p.question.replace(".", " ").split() if w.isdigit())
        assert int(p.answer) == a + b
        assert (a % 10) + (b % 10) >= 10  # every problem needs the carry
        assert f"\\boxed{{{a + b}}}" in p.solution


def test_teacher_sees_solution_only_with_hint():
    p = builtin_task("eval")[0]
    assert p.solution in teacher_messages(p, "sys", "solution")[-1]["content"]
    assert teacher_messages(p, "sys", "none")[-1]["content"] == p.question


def test_jsonl_loader_and_field_names(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"question": "1+1?", "final": 2, "idx": 7, "worked": "1 and 1 make 2"},
            {"question": "2+2?", "final": "#### 4"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = load_problems(path, question_field="question", answer_field="final", solution_field="worked")
    assert [(p.id, p.question, p.answer, p.solution, p.benchmark) for p in problems] == [
        ("7", "1+1?", "2", "1 and 1 make 2", "p"), ("1", "2+2?", "4", "", "p")]  # id: the row number when absent


def test_trainer_and_eval_read_a_file_into_the_same_problems(tmp_path):
    """One `Problem` type, one loader: the trainer's `load_split` and the eval CLI's call agree."""
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"problem": "3+4?", "answer": 7, "solution": "3+4=7", "id": "a"}) + "\n")
    cfg = DataConfig(train=str(path))
    assert load_split(str(path), cfg, "train") == load_problems(path, "math", solution_field="solution") == [
        Problem("a", "3+4?", "7", solution="3+4=7", benchmark="set")]


@pytest.mark.parametrize("content, needle", [
    ('{"problem": "x", "answer": 1}\n{"problem": "y"}\n', r"p\.jsonl:line 2: missing answer field 'answer'"),
    ('{"answer": 1}\n', r"p\.jsonl:line 1: missing question field 'problem'"),
    ('{"problem": "x", "answer": 1}\n{not json\n', r"p\.jsonl:line 2: not valid JSON"),
    ('[1, 2]\n', r"p\.jsonl:line 1: expected a JSON object"),
    ('', r"p\.jsonl: no problems"),
    ('{"problem": "x", "answer": 1, "solution": 5}\n', r"p\.jsonl:line 1: solution field 'solution' must be text"),
])
def test_malformed_rows_name_file_and_row(tmp_path, content, needle):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=needle):
        load_split(str(path), DataConfig(), "train")


def test_real_benchmark_file_loads(benchmark_data):
    problems = load_problems(benchmark_data / "math" / "gsm8k.jsonl", question_field="question", answer_field="answer")
    assert len(problems) == 1319 and problems[0].answer.replace(",", "").isdigit()


def test_stream_resumes_exactly():
    problems = builtin_task("eval")
    a = PromptStream(problems, seed=3)
    first = [p.id for p in a.next_batch(100)] + [p.id for p in a.next_batch(100)]  # crosses an epoch
    assert len(set(first[:128])) == 128  # an epoch is a permutation
    b = PromptStream(problems, seed=3)
    b.next_batch(100)
    c = PromptStream(problems, seed=3)
    c.load_state_dict(b.state_dict())
    assert [p.id for p in c.next_batch(100)] == first[100:]
    with pytest.raises(DataError, match="prompt set changed"):
        PromptStream(problems[:5], seed=3).load_state_dict(b.state_dict())
    # The same number of rows with one answer edited, or two rows swapped: another prompt set.
    edited = [dataclasses.replace(problems[7], answer="-1") if i == 7 else p for i, p in enumerate(problems)]
    swapped = [problems[1], problems[0], *problems[2:]]
    for changed in (edited, swapped):
        with pytest.raises(DataError, match="same 128 rows in number, other contents or order"):
            PromptStream(changed, seed=3).load_state_dict(b.state_dict())
    older = {k: v for k, v in b.state_dict().items() if k != "fingerprint"}  # a checkpoint from before it
    PromptStream(problems, seed=3).load_state_dict(older)


def test_student_chat_is_the_eval_harness_math_prompt():
    """Training and evaluation send the same chat; an empty system prompt means no system message."""
    from omniopd.data import student_messages
    from omniopd.eval.harness import build_prompt

    p = builtin_task("eval")[0]
    assert student_messages(p, "sys") == build_prompt(p, "math", "sys") == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": p.question}]
    assert student_messages(p, "") == [{"role": "user", "content": p.question}]
    assert build_prompt(p, "math")[0]["content"] == DataConfig().system_prompt  # None: the default


def test_repetition_rate_by_hand():
    from omniopd.eval.harness import repetition_rate

    assert repetition_rate([1, 2, 3, 4, 5]) == 0.0  # two distinct 4-grams
    assert repetition_rate([7] * 6) == pytest.approx(2 / 3)  # three 4-grams, one distinct
    assert repetition_rate([1, 2, 3]) == 0.0  # shorter than a 4-gram
