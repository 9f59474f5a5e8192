"""Evaluation: math (boxed answer + math-verify) and code (sandboxed tests) pass@k.

The names the trainer and outside code use:
- `grade_math(response, answer) -> bool` (the verifiable reward), `extract_answer(response) -> str | None`
- `grade_code(response, tests) -> CodeVerdict`, `run_python(code, stdin, limits) -> RunResult`
- `load_problems(path, suite) -> list[Problem]`, `evaluate(generator, problems, suite, k=...)`
- `pass_at_k(n, c, k)`
"""

from omniopd.eval.codegrade import CodeTests, CodeVerdict, extract_program, grade_code, run_tests
from omniopd.eval.data import DataError, Problem, load_problems
from omniopd.eval.harness import build_prompt, evaluate, format_table, grade_response, summarize
from omniopd.eval.mathgrade import MathVerifier, answers_match, extract_answer, grade_math
from omniopd.eval.passk import pass_at_k
from omniopd.eval.sandbox import RunResult, SandboxLimits, run_python

__all__ = [
    "CodeTests", "CodeVerdict", "DataError", "MathVerifier", "Problem", "RunResult", "SandboxLimits",
    "answers_match", "build_prompt", "evaluate", "extract_answer", "extract_program", "format_table",
    "grade_code", "grade_math", "grade_response", "load_problems", "pass_at_k", "run_python", "run_tests",
    "summarize",
]
