"""Helper process of `mathgrade.MathVerifier`: one JSON request per line in, one verdict per line out.

Run as a script (imports only math-verify). Each request gets one deadline (argv[1] seconds) covering
parse and verify; the parent kills this process if even that does not return in time (code stuck in C).
"""

import json
import signal
import sys

from math_verify import parse, verify


class _Deadline(BaseException):  # not an Exception: math-verify's handlers must not swallow it
    pass


def _alarm(signum, frame):
    raise _Deadline


def _equal(pred: str, gold: str) -> bool:
    gold_parsed = parse(f"$\\boxed{{{gold}}}$", parsing_timeout=None)
    pred_parsed = parse(f"$\\boxed{{{pred}}}$", parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))


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
