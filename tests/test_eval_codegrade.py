"""Code grading's number comparison (issue 16): integers exact, a tolerance only for expected floats.

Every integer case below passed on main, which compared all numbers as floats with rel_tol=1e-6.
"""

import pytest

from omniopd.eval.codegrade import CodeTests, return_matches, run_tests, stdout_matches
from omniopd.eval.sandbox import SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, wall_s=30, memory_mb=256, output_bytes=64 << 10)


@pytest.mark.parametrize("got,expected", [
    ("1000001", "1000000"),           # off by one at a million (main: equal within 1e-6)
    ("1000000008", "1000000007"),     # the classic modulus, off by one
    ("4 1000000008", "4 1000000007"),
    ("1000000.5", "1000000"),         # a float for an integer answer is wrong
    ("1e6", "1000000"),
    ("9" * 5000, "9" * 4999 + "8"),   # beyond int()'s digit limit: compared as digits, no ValueError
])
def test_different_integers_on_stdout_do_not_match(got, expected):
    assert not stdout_matches(got, expected)


@pytest.mark.parametrize("got,expected", [
    ("007", "7"), ("+7", "7"), ("-0", "0"), ("9" * 5000, "9" * 5000),
    ("0.3333333", "0.333333333"),     # floats keep their tolerance
    ("1000000.0000001", "1000000.0"),
    ("1", "1.0"), ("2.5e-3", "0.0025"),
])
def test_equal_numbers_on_stdout_match(got, expected):
    assert stdout_matches(got, expected)


def test_float_tolerance_is_the_tasks_choice():
    assert stdout_matches("0.3333333", "0.333333333", float_tol=1e-6)
    assert not stdout_matches("0.3333333", "0.333333333", float_tol=0.0)
    assert stdout_matches("0.5", "0.5", float_tol=0.0)


@pytest.mark.parametrize("got,expected,equal", [
    (1000001, 1000000, False), (1000000008, [1000000007], False), ([1, 1000001], [1, 1000000], False),
    ({"a": 10**9 + 8}, {"a": 10**9 + 7}, False), (1.0000001e6, 1000000, False),
    (True, 1, False), (1, True, False),               # a bool is not a number answer
    (3.0, 3, True), (7, [7], True), (0.1 + 0.2, 0.3, True), ([0.1 + 0.2, 2], [0.3, 2], True),
])
def test_return_values(got, expected, equal):
    assert return_matches(got, expected) is equal


def test_off_by_one_program_fails_its_test():
    """A whole program printing the unreduced answer is wrong (main: passed, 1e-6 relative)."""
    program = "n = int(input())\nprint(n * (n + 1) // 2 + 1)"
    verdict = run_tests(program, CodeTests(inputs=["2000"], outputs=["2001000"]), LIMITS)
    assert (verdict.passed, verdict.status) == (False, "wrong_answer")
    right = "n = int(input())\nprint(n * (n + 1) // 2)"
    assert run_tests(right, CodeTests(inputs=["2000"], outputs=["2001000"]), LIMITS).passed
    fn = "def f(n):\n    return 10**9 + 8"
    assert not run_tests(fn, CodeTests(inputs=[[1]], outputs=[[10**9 + 7]], fn_name="f"), LIMITS).passed
