"""Math grading: pull the final answer out of a response, decide whether it equals the reference.

`extract_answer` takes the last `\\boxed{}` / `\\fbox{}` (nested braces), else "#### X", else
"The (final) answer is X" / "Answer: X", else the last number. `grade_math` first tries a fast exact
path (normalized strings, plain numbers) and only then asks math-verify, which runs in a helper process
(`MathVerifier`) that is killed and restarted when a comparison exceeds its time limit — so a pathological
answer such as `9^{9^{9^9}}` can never hang the caller, and callers may be threads.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_RE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the `{...}` group opening at `text[start]` (nested braces), and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            continue  # \{ and \} are literal braces, not grouping
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None  # unbalanced: a truncated response


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}` (also `\\boxed 5`), or None."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _braced(text, i)
            if group is not None:
                return group[0].strip()
        elif i > match.end():  # "\boxed 5": the token after the space
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("$"):  # "$\frac{1}{2}$." -> the math between the first pair of $
        end = answer.find("$", 1)
        answer = answer[1:end] if end > 0 else answer[1:]
    answer = re.split(r"\.(?:\s|$)", answer)[0]  # up to the end of the sentence
    return answer.strip().rstrip(".").strip()


def extract_answer(response: str, *, boxed_only: bool = False) -> str | None:
    """The final answer written in `response`, or None when there is none (e.g. no number at all).

    `boxed_only`: no fallbacks — a weak model's last number can match the reference by accident.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if boxed_only or _BOX_RE.search(response):
        return None  # a box was opened but never closed: the response was cut off before its answer
    for pattern in (_HASH_RE, _ANSWER_RE):
        found = pattern.findall(response)
        if found:
            answer = _clean(found[-1])
            if answer:
                return answer
    numbers = _NUMBER_RE.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def gold_from_solution(solution: str) -> str | None:
    """Reference answer of a worked solution: its last box, else a GSM8K-style "#### N"."""
    boxed = last_boxed(solution)
    if boxed is not None:
        return boxed
    found = _HASH_RE.findall(solution)
    return found[-1].strip().replace(",", "") if found else None


# ---- fast path -------------------------------------------------------------------------------------

_DROP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "$", "~", r"\displaystyle"]
_UNIT_RE = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z ]+\}(?:\^\{?\d\}?)?$")


def normalize(answer: str) -> str:
    """A canonical spelling for exact comparison (never used to decide that two answers differ)."""
    s = answer.strip()
    for token in _DROP:
        s = s.replace(token, "")
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    s = re.sub(r"\^\{?\\circ\}?|°", "", s)
    s = _UNIT_RE.sub("", s)
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"[A-Za-z]=[^=<>]+", s):  # "x=5" -> "5"
        s = s[2:]
    return s


def _number(s: str) -> Fraction | None:
    """Exact value of an integer, decimal, a/b or \\frac{a}{b} (normalized), else None."""
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", s) or re.fullmatch(r"(\d+)/(\d+)", s)
    try:
        if m:
            return sign * Fraction(int(m.group(1)), int(m.group(2)))
        if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
            return sign * Fraction(s)
    except ZeroDivisionError:
        return None
    return None


def fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the answers can be judged without a CAS; None when math-verify must decide."""
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        if pn == gn:
            return True
        if pn.denominator == 1 and gn.denominator == 1 and "." not in p + g:
            return False  # two different integers: nothing symbolic can make them equal
    return None


# ---- math-verify in a helper process ---------------------------------------------------------------

class MathVerifier:
    """math-verify behind a hard time limit: a helper process, killed and restarted when it overruns.

    Thread-safe (one request at a time). The helper imports only math-verify; it starts on first use.
    """

    def __init__(self, timeout_s: float = 5.0, startup_timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.timeouts = 0

    worker_script = Path(__file__).with_name("_mathverify_worker.py")

    def _start(self) -> subprocess.Popen:
        worker = self.worker_script
        proc = subprocess.Popen([sys.executable, "-I", str(worker), str(self.timeout_s)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if self._read(proc, self.startup_timeout_s) != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"math-verify helper ({worker}) did not start within "
                               f"{self.startup_timeout_s:.0f} s; is math-verify installed?")
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen, timeout_s: float) -> str:
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        return proc.stdout.readline().strip() if ready else ""

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def verify(self, pred: str, gold: str) -> bool:
        """math-verify's verdict on `pred` against `gold`; False on timeout or a helper crash."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")
                proc.stdin.flush()
                # The helper's own deadline covers parse + verify; the margin is for code stuck in C.
                line = self._read(proc, self.timeout_s + 2.0)
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self.timeouts += 1
                self._kill()
                return False
            return bool(json.loads(line)["equal"])

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


_default_verifier: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = MathVerifier()
        return _default_verifier


def answers_match(pred: str, gold: str, verifier: MathVerifier | None = None) -> bool:
    """Is the extracted answer `pred` equal to the reference `gold`? (fast path, then math-verify)"""
    verdict = fast_verdict(pred, gold)
    if verdict is not None:
        return verdict
    return (verifier or default_verifier()).verify(pred, gold)


def grade_math(response: str, answer: str, verifier: MathVerifier | None = None, *,
               boxed_only: bool = False) -> bool:
    """The verifiable reward: does `response`'s final answer equal the reference `answer`?"""
    pred = extract_answer(response, boxed_only=boxed_only)
    return pred is not None and answers_match(pred, answer, verifier)
