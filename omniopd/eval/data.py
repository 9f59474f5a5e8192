"""Problem files -> `Problem`s (training prompts and benchmarks alike): JSONL or Parquet, in the layouts
the public harnesses use.

Field names are found by trying the usual ones in order (each overridable):
- question: problem, question, prompt, description
- math answer: answer (GSM8K's "rationale ... #### N" is cut to N), final_answer (OlympiadBench list),
  else the last \\boxed{} of solution (Minerva)
- code tests: input_output (APPS/TACO; JSON text or object with inputs/outputs/fn_name), else
  public_tests + private_tests + generated_tests (CodeContests; each {input: [...], output: [...]})
- id: id, idx, unique_id, problem_id, task_id, name; else the row number (0-based)
- solution (optional, a teacher's hint): only the field named by `solution_field`
The benchmark name is the file stem. Every error names the file and the line (JSONL) or row (Parquet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omniopd.eval.codegrade import CodeTests
from omniopd.eval.mathgrade import gold_from_solution

Suite = Literal["math", "code"]
QUESTION_FIELDS = ("problem", "question", "prompt", "description")
ID_FIELDS = ("id", "idx", "unique_id", "problem_id", "task_id", "name")
CODE_CONTESTS_SPLITS = ("public_tests", "private_tests", "generated_tests")


class DataError(ValueError):
    """A problem file or row that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Problem:
    """One prompt, for training (the trainer, the teachers) and for evaluation (the harness, the CLI) alike."""

    id: str
    question: str
    answer: str | None = None
    """Math: the reference final answer."""
    solution: str = ""
    """A worked reference solution a teacher may be shown (`teacher.hint=solution`); may be empty."""
    benchmark: str = ""
    """The set it comes from (a file's stem, 'builtin'): the harness reports per benchmark."""
    tests: CodeTests | None = None
    """Code: the tests a program must pass."""
    starter_code: str = ""


def read_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every row of a .jsonl/.json-lines or .parquet file; location is 'file:line N'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", row
        return
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is an error naming that line
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 (byte {e.start} of the line)") from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _pick(row: dict, where: str, override: str | None, candidates: tuple[str, ...], what: str) -> Any:
    if override:
        if row.get(override) is None:
            raise DataError(f"{where}: missing {what} field '{override}'")
        return row[override]
    for name in candidates:
        if row.get(name) is not None:
            return row[name]
    raise DataError(f"{where}: no {what} field (tried {', '.join(candidates)})")


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # AMC 2023 stores 27.0
    return str(value).strip()


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _kinds(values: list) -> str:
    names = {"dict": "an object", "list": "a list", "bool": "true/false"}
    return ", ".join(sorted({names.get(type(v).__name__, type(v).__name__) for v in values if not _scalar(v)}))


def _strip_dollars(text: str) -> str:
    text = text.strip()
    return text[1:-1].strip() if len(text) >= 2 and text[0] == text[-1] == "$" else text


def math_answer(row: dict, where: str, override: str | None = None) -> str:
    """The reference final answer of a math row (see the module docstring for the fields tried)."""
    if override:
        value = _pick(row, where, override, (), "answer")
    elif row.get("answer") is not None:
        value = row["answer"]
    elif row.get("final_answer") is not None:
        value = row["final_answer"]
    elif isinstance(row.get("solution"), str):
        value = gold_from_solution(row["solution"])
        if value is None:
            raise DataError(f"{where}: field 'solution' has no \\boxed{{}} answer")
    else:
        raise DataError(f"{where}: no answer field (tried answer, final_answer, \\boxed{{}} in solution)")
    if isinstance(value, list):  # OlympiadBench: a list of (usually one) answers
        if not value:
            raise DataError(f"{where}: empty answer list")
        if not all(_scalar(v) for v in value):
            raise DataError(f"{where}: the answer list must hold text or numbers, got {_kinds(value)}")
        return ", ".join(_strip_dollars(_as_text(v)) for v in value)
    elif not _scalar(value):  # a JSON object's text would be graded as if it were the answer
        raise DataError(f"{where}: the answer must be text or a number, got {_kinds([value])}")
    text = _as_text(value)
    if "####" in text:  # GSM8K: rationale, then "#### N"
        text = gold_from_solution(text) or ""
    text = _strip_dollars(text)
    if not text:
        raise DataError(f"{where}: empty answer")
    return text


def code_tests(row: dict, where: str, override: str | None = None) -> CodeTests:
    """The tests of a code row: APPS/TACO `input_output` or CodeContests `*_tests`."""
    if override or "input_output" in row:
        spec = _pick(row, where, override or "input_output", (), "tests")
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: tests field is not valid JSON ({e.msg})") from e
        if not isinstance(spec, dict) or "inputs" not in spec or "outputs" not in spec:
            raise DataError(f"{where}: tests must be an object with 'inputs' and 'outputs'")
        try:
            return CodeTests(list(spec["inputs"]), list(spec["outputs"]), spec.get("fn_name") or None)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from e
    if any(isinstance(row.get(s), dict) for s in CODE_CONTESTS_SPLITS):
        inputs, outputs = [], []
        for split in CODE_CONTESTS_SPLITS:
            part = row.get(split) or {}
            inputs += list(part.get("input") or [])
            outputs += list(part.get("output") or [])
        if len(inputs) != len(outputs):
            raise DataError(f"{where}: {len(inputs)} test inputs but {len(outputs)} outputs")
        return CodeTests(inputs, outputs)
    raise DataError(f"{where}: no tests (tried input_output, {', '.join(CODE_CONTESTS_SPLITS)})")


def load_problems(path: str | Path, suite: Suite = "math", *, question_field: str | None = None,
                  answer_field: str | None = None, solution_field: str | None = None, id_field: str | None = None,
                  limit: int | None = None) -> list[Problem]:
    """Problems of one file; `answer_field` names the math answer or the code tests field (None: the usual
    names are tried), `solution_field` an optional worked solution."""
    benchmark = Path(path).stem
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(read_rows(path)):
        if limit is not None and len(problems) >= limit:
            break
        question = _pick(row, where, question_field, QUESTION_FIELDS, "question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: the question must be non-empty text")
        id_value = row.get(id_field) if id_field else next(
            (row[k] for k in ID_FIELDS if row.get(k) is not None), index)
        if id_value is None:
            raise DataError(f"{where}: missing id field '{id_field}'")
        if not _scalar(id_value):
            raise DataError(f"{where}: the id must be text or a number, got {_kinds([id_value])}")
        pid = _as_text(id_value)
        if pid in seen:
            raise DataError(f"{where}: duplicate id '{pid}' (first at {seen[pid]}); choose --id-field")
        seen[pid] = where
        solution = row.get(solution_field) if solution_field else None
        if solution is not None and not isinstance(solution, str):
            raise DataError(f"{where}: solution field '{solution_field}' must be text, got {type(solution).__name__}")
        if suite == "math":
            problems.append(Problem(pid, question, answer=math_answer(row, where, answer_field),
                                    solution=solution or "", benchmark=benchmark))
        elif suite == "code":
            problems.append(Problem(pid, question, solution=solution or "", benchmark=benchmark,
                                    tests=code_tests(row, where, answer_field),
                                    starter_code=str(row.get("starter_code") or "")))
        else:
            raise DataError(f"unknown suite '{suite}': use math or code")
    if not problems:
        raise DataError(f"{path}: no problems")
    return problems
