"""Generate, grade, summarize: the pieces `python -m omniopd.eval` (and the trainer) put together.

A sample record is one JSON object: benchmark, problem_id, sample_index, response, correct, verdict
(the extracted answer, or the code status), reference (math), finish_reason, num_tokens and repetition
(share of repeated token 4-grams) when generated here. `--grade` reads the same layout back (only
benchmark is optional).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omniopd.config import DataConfig
from omniopd.eval.codegrade import grade_code
from omniopd.eval.data import DataError, Problem, Suite, read_rows
from omniopd.eval.mathgrade import MathVerifier, answers_match, extract_answer
from omniopd.eval.passk import default_ks, mean_pass_at_k
from omniopd.eval.sandbox import DEFAULT_LIMITS, SandboxLimits

MATH_SYSTEM_PROMPT = DataConfig().system_prompt  # the trainer's default: eval prompts match training
CODE_SYSTEM_PROMPT = ("Solve the programming problem in Python 3. Reply with one complete program in a "
                      "```python code block.")


def build_prompt(problem: Problem, suite: Suite, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one problem (the student's chat in training too). `system_prompt`: None takes the
    suite's default, '' sends no system message."""
    if suite == "math":
        system, user = MATH_SYSTEM_PROMPT if system_prompt is None else system_prompt, problem.question
    else:
        system = CODE_SYSTEM_PROMPT if system_prompt is None else system_prompt
        tests = problem.tests
        if tests is not None and tests.fn_name:
            how = f"Implement the function `{tests.fn_name}`; it is called directly, do not read input."
        else:
            how = "Read the input from standard input and print the answer to standard output."
        user = f"{problem.question.strip()}\n\n{how}"
        if problem.starter_code.strip():
            user += f"\n\nStart from:\n```python\n{problem.starter_code.rstrip()}\n```"
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def repetition_rate(token_ids: Sequence[int], n: int = 4) -> float:
    """Share of a response's token n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def grade_response(problem: Problem, response: str, suite: Suite, *, limits: SandboxLimits = DEFAULT_LIMITS,
                   verifier: MathVerifier | None = None, boxed_only: bool = False) -> tuple[bool, str]:
    """(correct, verdict): verdict is the extracted answer (math; '' if none) or the code status."""
    if suite == "math":
        if problem.answer is None:
            raise DataError(f"{problem.benchmark}/{problem.id}: no reference answer")
        pred = extract_answer(response, boxed_only=boxed_only)
        return (pred is not None and answers_match(pred, problem.answer, verifier)), pred or ""
    if problem.tests is None:
        raise DataError(f"{problem.benchmark}/{problem.id}: no tests")
    verdict = grade_code(response, problem.tests, limits)
    return verdict.passed, verdict.status


def grade_records(records: list[dict[str, Any]], problems: dict[tuple[str, str], Problem], suite: Suite, *,
                  limits: SandboxLimits = DEFAULT_LIMITS, workers: int = 0,
                  boxed_only: bool = False) -> list[dict[str, Any]]:
    """Add `correct` and `verdict` to each record (in place, also returned); code runs `workers` at a time."""
    verifier = MathVerifier() if suite == "math" else None

    def grade(record: dict[str, Any]) -> None:
        problem = problems[(record["benchmark"], record["problem_id"])]
        record["correct"], record["verdict"] = grade_response(problem, record["response"], suite, limits=limits,
                                                              verifier=verifier, boxed_only=boxed_only)
        if suite == "math":
            record["reference"] = problem.answer

    try:
        if suite == "code":
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                list(pool.map(grade, records))
        else:
            for record in records:
                grade(record)
    finally:
        if verifier is not None:
            verifier.close()
    return records


def generate_records(generator, problems: Sequence[Problem], suite: Suite, *, k: int, temperature: float,
                     top_p: float, max_new_tokens: int, batch_size: int = 64,
                     system_prompt: str | None = None,
                     progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`k` responses per problem from a `StudentGenerator`, as ungraded sample records."""
    records: list[dict[str, Any]] = []
    start_time = time.monotonic()
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        outputs = generator.generate([build_prompt(p, suite, system_prompt) for p in batch], k,
                                     temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        for problem, samples in zip(batch, outputs):
            for i, sample in enumerate(samples):
                records.append({"benchmark": problem.benchmark, "problem_id": problem.id, "sample_index": i,
                                "response": sample.text, "finish_reason": sample.finish_reason,
                                "num_tokens": len(sample.token_ids),
                                "repetition": repetition_rate(sample.token_ids)})
        if progress is not None:
            tokens = sum(r["num_tokens"] for r in records)
            elapsed = time.monotonic() - start_time
            progress(f"[eval] generated {start + len(batch)}/{len(problems)} problems, {tokens} tokens, "
                     f"{elapsed:.0f} s ({tokens / max(elapsed, 1e-9):.0f} tokens/s)")
    return records


def evaluate(generator, problems: Sequence[Problem], suite: Suite, *, k: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 512, limits: SandboxLimits = DEFAULT_LIMITS,
             system_prompt: str | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Generate `k` samples per problem with `generator`, grade them: (summary, graded records)."""
    records = generate_records(generator, problems, suite, k=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, system_prompt=system_prompt)
    grade_records(records, {(p.benchmark, p.id): p for p in problems}, suite, limits=limits)
    return summarize(records), records


def _unencodable_key(row: dict[str, Any]) -> str | None:
    """The first field holding text that cannot be written as UTF-8 (a lone surrogate from a JSON
    escape such as "\\ud800"), else None."""
    for key, value in row.items():
        try:
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return key
    return None


def read_records(path: str | Path, problems: dict[tuple[str, str], Problem]) -> list[dict[str, Any]]:
    """Sample records from a JSONL file, each matched to a loaded problem (errors name the line).

    Every field is checked before any grading starts, so a bad row stops the run with its line
    named instead of a traceback halfway through (or after) grading.
    """
    by_id: dict[str, list[str]] = defaultdict(list)
    for benchmark, pid in problems:
        by_id[pid].append(benchmark)
    records = []
    for where, row in read_rows(path):  # the loaders' reader: same JSON checks and line-naming errors
        id_key = next((k for k in ("problem_id", "id") if row.get(k) is not None), None)
        response_key = next((k for k in ("response", "text", "completion") if k in row), None)
        if id_key is None or response_key is None:
            raise DataError(f"{where}: needs 'problem_id' (or 'id') and a 'response' text")
        pid, response = row[id_key], row[response_key]
        if not isinstance(response, str):
            raise DataError(f"{where}: '{response_key}' must be a string, got {type(response).__name__}")
        if isinstance(pid, bool) or not isinstance(pid, str | int | float) or (
                isinstance(pid, float) and not pid.is_integer()):
            raise DataError(f"{where}: '{id_key}' must be a string or an integer, got {pid!r:.60}")
        pid = str(int(pid)) if isinstance(pid, float) else str(pid)
        bad_key = _unencodable_key(row)
        if bad_key is not None:
            raise DataError(f"{where}: field '{bad_key}' holds text that is not encodable as UTF-8 "
                            "(a lone surrogate escape such as \\ud800)")
        benchmark = row.get("benchmark")
        if benchmark is not None and not isinstance(benchmark, str):
            raise DataError(f"{where}: 'benchmark' must be a string, got {type(benchmark).__name__}")
        if benchmark is None:
            if len(by_id[pid]) != 1:
                found = "in several data files" if by_id[pid] else "in none of the data files"
                raise DataError(f"{where}: problem id '{pid}' is {found}; add a 'benchmark' field")
            benchmark = by_id[pid][0]
        if (benchmark, pid) not in problems:
            raise DataError(f"{where}: no problem '{pid}' in benchmark '{benchmark}'")
        records.append({**row, "benchmark": benchmark, "problem_id": pid, "response": response})
    if not records:
        raise DataError(f"{path}: no samples")
    return records


def summarize(records: Iterable[dict[str, Any]], ks: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """Per benchmark: problems, samples, pass@1 (mean over samples) and pass@k for k up to the fewest
    samples any problem has; plus mean response tokens and repetition when known."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    tokens: dict[str, list[int]] = defaultdict(list)
    repetition: dict[str, list[float]] = defaultdict(list)
    for r in records:
        nc = counts[r["benchmark"]][r["problem_id"]]
        nc[0] += 1
        nc[1] += bool(r["correct"])
        if r.get("num_tokens") is not None:
            tokens[r["benchmark"]].append(r["num_tokens"])
        if r.get("repetition") is not None:
            repetition[r["benchmark"]].append(r["repetition"])
    summary = {}
    for benchmark, per_problem in counts.items():
        pairs = [(n, c) for n, c in per_problem.values()]
        n_min = min(n for n, _ in pairs)
        entry: dict[str, Any] = {"problems": len(pairs), "samples": sum(n for n, _ in pairs), "k": n_min}
        for k in sorted({k for k in (ks or default_ks(n_min)) if k <= n_min}):
            entry[f"pass@{k}"] = mean_pass_at_k(pairs, k)
        if tokens[benchmark]:
            entry["mean_tokens"] = sum(tokens[benchmark]) / len(tokens[benchmark])
        if repetition[benchmark]:
            entry["mean_repetition"] = sum(repetition[benchmark]) / len(repetition[benchmark])
        summary[benchmark] = entry
    return summary


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """Plain-text table: benchmark, problems, k, pass@1, pass@k (percent)."""
    header = f"{'benchmark':<20} {'problems':>8} {'k':>3} {'pass@1':>8} {'pass@k':>8}"
    lines = [header, "-" * len(header)]
    for name, e in summary.items():
        k = e["k"]
        lines.append(f"{name:<20} {e['problems']:>8} {k:>3} {100 * e['pass@1']:>7.1f}% "
                     f"{100 * e[f'pass@{k}']:>7.1f}%")
    return "\n".join(lines)


def _json_line(record: dict[str, Any]) -> str:
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a generated text with a lone surrogate: \\u-escapes are still valid JSON
        line = json.dumps(record, ensure_ascii=True)
    return line + "\n"


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a reader (or a crash)
    sees the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(out_dir: str | Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """samples.jsonl (every sample with its verdict) and summary.json under `out_dir`, each written
    atomically, and only after both have been serialized (nothing is written if either cannot be)."""
    out = Path(out_dir)
    samples_text = "".join(_json_line(r) for r in records)
    summary_text = json.dumps(summary, indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(out / "samples.jsonl", samples_text)
    _write_atomically(out / "summary.json", summary_text)
    return out
