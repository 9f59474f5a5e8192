"""Code grading: take the program out of a response and run it against the problem's tests.

Two test styles, as in APPS/TACO `input_output`: stdin/stdout (`inputs[i]` is the program's stdin,
`outputs[i]` its expected stdout) and function call (`fn_name` set: `inputs[i]` is the argument list,
`outputs[i]` the return value, possibly wrapped in a one-element list as APPS does).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from omniopd.eval.sandbox import DEFAULT_LIMITS, RunResult, SandboxLimits, run_python

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class CodeTests:
    inputs: list
    outputs: list
    fn_name: str | None = None
    float_tol: float = 1e-6
    """Tolerance (absolute or relative) for outputs whose expected value is a float; 0 for exact.
    Integers always compare exactly."""

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs):
            raise ValueError(f"{len(self.inputs)} test inputs but {len(self.outputs)} outputs")


@dataclass(frozen=True)
class CodeVerdict:
    passed: bool
    status: str
    """'passed', 'no_code', 'no_tests', 'wrong_answer', or the sandbox status of the first failing test."""
    tests_passed: int
    tests_total: int
    detail: str = field(default="", compare=False)
    missing_layers: tuple[str, ...] = field(default=(), compare=False)
    """Sandbox kernel layers that did not apply to these runs (see `RunResult.isolation`)."""


def extract_program(response: str) -> str | None:
    """The last ```python fenced block (else the last fenced block without a language), or None."""
    blocks = _FENCE_RE.findall(response)
    for wanted in (("python", "python3", "py"), ("",)):
        chosen = [code for lang, code in blocks if lang.lower() in wanted]
        if chosen:
            return chosen[-1]
    return None


def _lines(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


_INT_RE = re.compile(r"[-+]?\d+")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+)|[-+]?(?:inf|nan)", re.IGNORECASE)


def _int_text(token: str) -> str:
    """Canonical digits of an integer token of any length ("+007" -> "7"; no int() and its digit limit)."""
    sign = "-" if token.startswith("-") else ""
    digits = token.lstrip("+-").lstrip("0") or "0"
    return ("" if digits == "0" else sign) + digits


def _token_equal(got: str, expected: str, float_tol: float) -> bool:
    if got == expected:
        return True
    if _INT_RE.fullmatch(expected):  # an integer answer is exact: 1000001 is not 1000000
        return _INT_RE.fullmatch(got) is not None and _int_text(got) == _int_text(expected)
    if float_tol > 0 and _FLOAT_RE.fullmatch(expected) and (_FLOAT_RE.fullmatch(got) or _INT_RE.fullmatch(got)):
        return math.isclose(float(got), float(expected), rel_tol=float_tol, abs_tol=float_tol)
    return False


def stdout_matches(got: str, expected: str, float_tol: float = 1e-6) -> bool:
    """Whitespace-insensitive token comparison. Integer tokens must match exactly; only where the
    expected token is a real float (a point or an exponent) is `float_tol` (abs or relative) allowed."""
    g, e = got.split(), expected.split()
    return len(g) == len(e) and all(_token_equal(a, b, float_tol) for a, b in zip(g, e))


def _value_equal(got, expected, float_tol: float) -> bool:
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected  # True is not 1
    if isinstance(expected, int) and isinstance(got, int | float):
        return got == expected  # exact: 3.0 is 3, 1000001 is not 1000000
    if isinstance(expected, float) and isinstance(got, int | float):
        return got == expected or (float_tol > 0 and math.isclose(got, expected, rel_tol=float_tol,
                                                                   abs_tol=float_tol))
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(_value_equal(a, b, float_tol) for a, b in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_value_equal(got[k], expected[k], float_tol) for k in got)
    return got == expected


def return_matches(got, expected, float_tol: float = 1e-6) -> bool:
    """APPS rule: the value itself, or the value wrapped in a one-element list (numbers as in
    `stdout_matches`: integers exact, a tolerance only for expected floats)."""
    return _value_equal(got, expected, float_tol) or (
        isinstance(expected, list) and len(expected) == 1 and _value_equal(got, expected[0], float_tol))


def _check(run: RunResult, tests: CodeTests, i: int) -> bool:
    if tests.fn_name:
        return return_matches(run.result, tests.outputs[i], tests.float_tol)
    return stdout_matches(run.stdout, _lines(tests.outputs[i]), tests.float_tol)


def run_tests(program: str, tests: CodeTests, limits: SandboxLimits = DEFAULT_LIMITS,
              stop_at_first_failure: bool = True) -> CodeVerdict:
    """Run `program` on every test (one sandboxed process each)."""
    if not tests.inputs:
        return CodeVerdict(False, "no_tests", 0, 0)
    passed, first_failure, detail, missing = 0, "", "", set()
    for i, test_input in enumerate(tests.inputs):
        if tests.fn_name:
            args = test_input if isinstance(test_input, list) else [test_input]
            run = run_python(program, "", limits, fn_name=tests.fn_name, args=args)
        else:
            run = run_python(program, _lines(test_input), limits)
        missing.update(run.missing_layers)
        if run.status == "ok" and _check(run, tests, i):
            passed += 1
            continue
        if not first_failure:
            first_failure = "wrong_answer" if run.status == "ok" else run.status
            detail = f"test {i}: " + (run.stderr.strip().splitlines() or [""])[-1][:300]
        if stop_at_first_failure:
            break
    total = len(tests.inputs)
    return CodeVerdict(passed == total, "passed" if passed == total else first_failure, passed, total, detail,
                       tuple(sorted(missing)))


def grade_code(response: str, tests: CodeTests, limits: SandboxLimits = DEFAULT_LIMITS) -> CodeVerdict:
    """Extract the program from `response` and run the tests; `.passed` is the verdict."""
    program = extract_program(response)
    if program is None:
        return CodeVerdict(False, "no_code", 0, len(tests.inputs))
    return run_tests(program, tests, limits)
