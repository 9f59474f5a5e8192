"""experiments/worked_lines.py: the worked-line checker against hand-computed cases and the generator's own
worked solutions (every line of which is right by construction)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omniopd.data import builtin_task

_spec = importlib.util.spec_from_file_location(
    "worked_lines", Path(__file__).resolve().parents[1] / "experiments" / "worked_lines.py")
worked_lines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worked_lines)


def test_lines_are_checked_in_exact_integer_arithmetic():
    text = ("Step 1: 4 × 11 = 42 beads. Now 93 + 42 = 135. Step 2: 51 - 35 = 16 left. "
            "Step 3: 17 ÷ 2 = 8, so 8. Step 4: 84 ÷ 6 = 14. Step 5: 135 × 4 = 540. 5 - 8 = -3")
    assert worked_lines.line_errors(text) == [("×", False), ("+", True), ("-", True), ("÷", False), ("÷", True),
                                              ("×", True), ("-", True)]
    assert worked_lines.line_errors("The answer is \\boxed{12}.") == []


def test_every_line_of_the_generators_worked_solutions_is_right():
    problems = builtin_task("train", "chained")[:200]
    checked = [right for p in problems for _, right in worked_lines.line_errors(p.solution)]
    assert len(checked) > 600 and all(checked)
