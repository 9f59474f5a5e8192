"""Helper process of `mathgrade.MathVerifier`: one JSON request per line in, one verdict per line out.

Run as a script (imports only math-verify). Both answers are parsed as whole LaTeX expressions: an answer
that does not parse is not equal to anything (the caller has already compared identical spellings). Each
request gets one deadline (argv[1] seconds) covering parse and verify; the parent kills this process if
even that does not return in time (code stuck in C).
"""

import json
import signal
import sys
from dataclasses import replace

from latex2sympy2_extended.latex2sympy2 import normalize_latex
from math_verify import verify
from math_verify.parser import LatexExtractionConfig, parse_latex_cached

# math-verify's LaTeX normalization, without its unit list (which drops `c`, `d`, `t`, `ab`, `apple`s, ...
# after a number: `2ab` would equal 2). `mathgrade` drops the units it documents before asking.
_NORMALIZATION = replace(LatexExtractionConfig().normalization_config, units=False)


class _Deadline(BaseException):  # not an Exception: math-verify's handlers must not swallow it
    pass


def _alarm(signum, frame):
    raise _Deadline


def _expression(answer: str):
    """`answer` parsed as one LaTeX expression. Never math-verify's `parse`, whose extraction falls back to
    any number it finds inside text it cannot parse (`\\bigl(3, 4\\bigr)` became 4, `x \\mapsto 2x` 2).
    Raises on an answer that is not an expression."""
    return parse_latex_cached(normalize_latex(answer, config=_NORMALIZATION))


def _equal(pred: str, gold: str) -> bool:
    return bool(verify([_expression(gold)], [_expression(pred)], timeout_seconds=None))


def main() -> None:
    deadline = float(sys.argv[1])
    signal.signal(signal.SIGALRM, _alarm)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, deadline)
        try:
            equal = _equal(request["pred"], request["gold"])
        except (_Deadline, Exception):  # math-verify's own errors and our deadline both mean "not equal"
            equal = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps({"equal": equal}), flush=True)


if __name__ == "__main__":
    main()
