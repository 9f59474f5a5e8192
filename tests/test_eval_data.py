"""Problem loaders (every shared benchmark file, JSONL and Parquet, errors naming the row) and pass@k."""

import itertools
import json
from math import comb
from pathlib import Path

import pytest

from omniopd.eval.data import DataError, load_problems
from omniopd.eval.mathgrade import grade_math
from omniopd.eval.passk import default_ks, mean_pass_at_k, pass_at_k

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

# file -> (rows, first id, first reference answer, last reference answer): checked against the files.
SHARED = {
    "aime24": (30, "60", "204", "902"),
    "aime25": (30, "0", "70", "240"),
    "amc23": (40, "0", "27", "8"),
    "gsm8k": (1319, "0", "18", "14"),
    "math500": (500, "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)", r"106^\circ"),
    "minerva_math": (272, "0", "1.6", "10.1"),
    "olympiadbench": (675, "1606", "2", "11"),
}


def test_every_shared_math_file_loads(benchmark_data):
    files = sorted((benchmark_data / "math").glob("*.jsonl"))
    assert {f.stem for f in files} >= set(SHARED)
    for f in files:
        problems = load_problems(f, "math")
        assert all(p.benchmark == f.stem and p.question.strip() and p.answer for p in problems), f
        assert len({p.id for p in problems}) == len(problems), f
        if f.stem in SHARED:
            rows, first_id, first, last = SHARED[f.stem]
            assert (len(problems), problems[0].id, problems[0].answer, problems[-1].answer) == (
                rows, first_id, first, last), f


def test_reference_solutions_grade_as_correct(benchmark_data):
    # A loader that picked the wrong field would fail this: each worked solution must reach its answer.
    rows = [json.loads(line) for line in (benchmark_data / "math" / "math500.jsonl").read_text().splitlines()]
    problems = load_problems(benchmark_data / "math" / "math500.jsonl", "math", limit=100)
    assert all(grade_math(r["solution"], p.answer) for r, p in zip(rows, problems))
    rows = [json.loads(line) for line in (benchmark_data / "math" / "gsm8k.jsonl").read_text().splitlines()][:100]
    problems = load_problems(benchmark_data / "math" / "gsm8k.jsonl", "math", limit=100)
    assert all(grade_math(r["answer"], p.answer) for r, p in zip(rows, problems))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_layouts(tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "q1", "answer": "Because 2+2=4.\n#### 1,234", "idx": 7},  # GSM8K
        {"question": "q2", "final_answer": ["$\\frac{1}{2}$"], "id": 8},  # OlympiadBench
        {"problem": "q3", "solution": "So \\boxed{\\frac{3}{4}}.", "idx": 9},  # Minerva
        {"problem": "q4", "answer": 27.0},  # AMC 2023 (float), no id -> row number
        {"problem": "q5", "final_answer": ["$(1,2)$", "$(3,4)$"]},
    ])
    got = [(p.id, p.question, p.answer) for p in load_problems(f, "math")]
    assert got == [("7", "q1", "1234"), ("8", "q2", r"\frac{1}{2}"), ("9", "q3", r"\frac{3}{4}"),
                   ("3", "q4", "27"), ("4", "q5", "(1,2), (3,4)")]


def test_field_overrides(tmp_path):
    f = write_jsonl(tmp_path / "custom.jsonl", [{"text": "What?", "gold": "5", "key": "a"}])
    [p] = load_problems(f, "math", question_field="text", answer_field="gold", id_field="key")
    assert (p.benchmark, p.id, p.question, p.answer) == ("custom", "a", "What?", "5")


@pytest.mark.parametrize("rows,message", [
    (['{"problem": "q", "answer": "1"}', '{"problem": "q", "answer": '], "bad.jsonl:line 2: not valid JSON"),
    (['{"problem": "q", "answer": "1"}', '[1, 2]'], "bad.jsonl:line 2: expected a JSON object"),
    (['{"problem": "q"}'], "bad.jsonl:line 1: no answer field"),
    (['{"answer": "1"}'], "bad.jsonl:line 1: no question field"),
    (['{"problem": "q", "answer": "1", "id": 1}', '{"problem": "r", "answer": "2", "id": 1}'],
     "bad.jsonl:line 2: duplicate id '1'"),
    (['{"problem": "q", "solution": "no box here"}'], "bad.jsonl:line 1: field 'solution' has no"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        load_problems(f, "math")


def test_missing_override_field_names_it(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "q", "answer": "1"}])
    with pytest.raises(DataError, match="bad.jsonl:line 1: missing answer field 'gold'"):
        load_problems(f, "math", answer_field="gold")
    with pytest.raises(DataError, match="no such file"):
        load_problems(tmp_path / "absent.jsonl", "math")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"question": "q1", "final_answer": ["12"], "id": 5}, {"question": "q2", "final_answer": ["7"], "id": 6}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "olymp.parquet")
    problems = load_problems(tmp_path / "olymp.parquet", "math")
    assert [(p.benchmark, p.id, p.answer) for p in problems] == [("olymp", "5", "12"), ("olymp", "6", "7")]
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"broken.parquet:row 0: no answer field"):
        load_problems(tmp_path / "broken.parquet", "math")


def test_code_layouts():
    problems = load_problems(FIXTURES / "code_small.jsonl", "code")
    by_id = {p.id: p for p in problems}
    assert set(by_id) == {"sum_two", "reverse_words", "max_of_list"}
    assert by_id["sum_two"].tests.fn_name is None and len(by_id["sum_two"].tests.inputs) == 3
    assert by_id["reverse_words"].tests.fn_name == "reverse_words"
    assert by_id["reverse_words"].starter_code.startswith("def reverse_words")
    assert by_id["max_of_list"].tests.inputs == ["3\n1 5 2\n", "1\n-7\n", "4\n2 2 2 2\n"]


def test_code_rows_without_tests_are_refused(tmp_path):
    f = write_jsonl(tmp_path / "apps.jsonl", [{"question": "q", "input_output": "{not json"}])
    with pytest.raises(DataError, match="apps.jsonl:line 1: tests field is not valid JSON"):
        load_problems(f, "code")
    f = write_jsonl(tmp_path / "apps.jsonl", [{"question": "q", "input_output": {"inputs": ["1"], "outputs": []}}])
    with pytest.raises(DataError, match="apps.jsonl:line 1: 1 test inputs but 0 outputs"):
        load_problems(f, "code")


# ---- pass@k -----------------------------------------------------------------------------------------

def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (8, 1, 4), (6, 6, 2), (7, 0, 7)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k))


def test_pass_at_k_values():
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - comb(7, 2) / comb(10, 2))
    assert mean_pass_at_k([(4, 1), (4, 0), (4, 4)], 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
