"""Math grading: pull the final answer out of a response, decide whether it equals the reference.

`extract_answer` (in `mathextract`) finds a whole expression or number, never a number pulled out of a larger
expression or word: the last box, an answer phrase's expression, a bold number, the last math span or bare
expression, the last standalone number. Grading never raises on model output: an integer of any length, any
text up to megabytes, is a verdict (rules for ambiguous spellings: see `normalize` and the README).
`grade_math` first tries a fast exact path (normalized strings, plain numbers; ambiguous digit runs and
identifiers such as `AZYUK2A` equal only their own spelling) and only then asks math-verify to parse both
answers as whole LaTeX expressions. It runs in a helper process (`MathVerifier`) that is killed and restarted
when a comparison exceeds its time limit — so a pathological answer such as `9^{9^{9^9}}` can never hang the
caller, and callers may be threads.
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

from omniopd.eval.mathextract import (
    ORDINALS,
    UNITS,
    extract_answer,
    gold_from_solution,
    is_unit_phrase,
    last_boxed,
    proper_fraction,
    read_number_run,
)

__all__ = ["MAX_ANSWER_CHARS", "ORDINALS", "UNITS", "MathVerifier", "answers_match", "default_verifier",
           "extract_answer", "fast_verdict", "gold_from_solution", "grade_math", "last_boxed", "normalize",
           "read_number_run"]

_MINUS = "\u2212"  # Unicode minus: a model writing "−5" means -5
MAX_ANSWER_CHARS = 1000
"""An extracted answer longer than this is graded by exact (normalized) comparison only: math-verify
would spend its whole deadline parsing it, and no reference answer is that long."""


# ---- fast path -------------------------------------------------------------------------------------

_DROP = [r"\$", r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "$", "~", r"\displaystyle"]
# A trailing unit in \text/\mbox/\mathrm after a number ("10\text{ cm}", "5\mathrm{m}^2"); but \mathrm{i}
# and \mathrm{e} are the imaginary unit and Euler's number, never units (`4\mathrm{i}` is not 4).
# Only units and plain nouns (`is_unit_phrase`): `2\text{ million}`, `2\text{ or more}`, `2\text{ times}` stay.
_UNIT_RE = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{(?!\s*[ie]\s*\})\s*([A-Za-z ]+)\}(?:\^\{?\d\}?)?$")


def _drop_unit(answer: str) -> str:
    return _UNIT_RE.sub(lambda m: "" if is_unit_phrase(m.group(1)) else m.group(0), answer)


# LaTeX spacing between digits (`12\,34`, `1~2`) separates them like a typed space: `1\,000` is 1000 (SI
# grouping), `12\,34` is no number.
_DIGIT_SPACING_RE = re.compile(r"(?<=\d)\s*(?:\\[,;: ]|~)\s*(?=\d)")
# A number in a base (`52_7`, `4210_{6}`): equal only with the same digits in the same base.
_BASED_RE = re.compile(r"([0-9A-Z]+)_\{?([0-9A-Za-z]+)\}?")
# "1 4/5" typed with a space is the mixed number 1 4/5 = 9/5 (a careful grader's reading), not 14/5
_CONSTANT_RE = re.compile(r"\\(?:text|mbox|mathrm|operatorname)\{\s*([ie])\s*\}")
_MIXED_TYPED_RE = re.compile(r"(?<![\d.,/])(\d+)[ \t]+(\d+)[ \t]*/[ \t]*(\d+)(?![\d./])")
# The whole answer a number then a known unit or an ordinal suffix ("2cm", "5 m", "3 kg.", "6th"): the
# number. Only as the whole answer, since inside an expression `5m` is 5 times m.
_SUFFIXES = "|".join(sorted(UNITS | ORDINALS, key=len, reverse=True))
_BARE_UNIT_RE = re.compile(rf"^\s*([-+]?[\d.,/ ]*\d)\s*(?:{_SUFFIXES})\.?\s*$")
# A letter glued before a digit (`AZYUK2A`, `x2`, `2A3`; LaTeX commands and exponents `1e5` aside) makes an
# identifier, never a number times letters: such an answer equals only the same spelling.
_IDENTIFIER_RE = re.compile(r"(?<![\d.])[A-Za-z]\d|(?<=[\d.])[A-DF-Za-df-z]\d")
_MIXED_RE = re.compile(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_MAX_DIGITS = 4000  # below Python's int-from-string limit (4300): longer digit strings compare as text


def _typed_mixed(m: re.Match) -> str:
    whole, num, den = m.groups()
    if proper_fraction(num, den):
        return rf"{whole}\frac{{{num}}}{{{den}}}"
    return f"{whole}\u2009{num}/{den}"  # "11 6/6" is not a mixed number: ambiguous, kept apart (text only)


def normalize(answer: str) -> str:
    r"""A canonical spelling for exact comparison (never used to decide that two answers differ).

    Rules for ambiguous spellings: `1 4/5` and `1\frac{4}{5}` (a whole number then a proper fraction)
    are mixed numbers; `1 000 000` (groups of three) is one number; other digits separated by a space
    (`12 34`, `11 6/6`) are not a single number and are kept apart by a thin space, which `fast_verdict`
    compares as text only; `\mathrm{i}` / `\mathrm{e}` are constants; a number then a known unit (`2cm`,
    `5 m`), as the whole answer, is the number.
    """
    s = re.sub("[\u00a0\u2009\u202f]", " ", answer).strip().replace(_MINUS, "-").replace("{,}", ",")
    s = _DIGIT_SPACING_RE.sub(" ", s)
    for token in _DROP:
        s = s.replace(token, "")
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    s = re.sub(r"\^\{?\\circ\}?|°", "", s)
    s = _drop_unit(s)
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = _BARE_UNIT_RE.sub(r"\1", s)
    s = re.sub(r"^\+(?=\d)", "", s.strip())
    s = _MIXED_TYPED_RE.sub(_typed_mixed, s)
    s = re.sub(r"\s+", " ", s).strip()
    if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):  # SI thousands: "1 000 000"
        s = s.replace(" ", "")
    s = re.sub(r"(?<=\d) (?=\d)", "\u2009", s)  # keep "12 34" apart: it is not the number 1234
    s = s.replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"[A-Za-z]=[^=<>]+", s):  # "x=5" -> "5"
        s = s[2:]
    return s


def _number(s: str) -> Fraction | None:
    """Exact value of an integer, decimal, a/b, \\frac{a}{b} or mixed n\\frac{a}{b} (normalized), else None.

    None for digit strings too long to convert (> _MAX_DIGITS): those only ever match as identical text.
    """
    if len(s) > _MAX_DIGITS:
        return None
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    try:
        mixed = _MIXED_RE.fullmatch(s)
        if mixed:
            whole, num, den = (int(g) for g in mixed.groups())
            if num >= den:
                return None  # "2\frac{5}{3}" is not a mixed number; let math-verify read it
            return sign * (whole + Fraction(num, den))
        m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", s) or re.fullmatch(r"(\d+)/(\d+)", s)
        if m:
            return sign * Fraction(int(m.group(1)), int(m.group(2)))
        if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
            return sign * Fraction(s)
    except (ZeroDivisionError, ValueError):
        return None
    return None


def _integer_text(s: str) -> str | None:
    """Canonical text of an integer of any length ("-007" -> "-7"), else None."""
    m = re.fullmatch(r"(-?)0*(\d+)", s)
    if m is None:
        return None
    digits = m.group(2)
    return ("-" if m.group(1) and digits != "0" else "") + digits


def fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the answers can be judged without a CAS; None when math-verify must decide."""
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    if "\u2009" in p or _IDENTIFIER_RE.search(re.sub(r"\\[A-Za-z]+", " ", pred)):
        return False  # an ambiguous digit run ("12 34") or an identifier ("AZYUK2A"): text only
    pb, gb = _BASED_RE.fullmatch(p), _BASED_RE.fullmatch(g)
    if pb and gb:  # "52_7" vs "52_8": the base is part of the number
        return pb.group(1) == gb.group(1) and pb.group(2) == gb.group(2)
    if (pb and _number(g) is not None) or (gb and _number(p) is not None):
        return False  # "2024_t" is not the number 2024
    pi, gi = _integer_text(p), _integer_text(g)
    if pi is not None and gi is not None:  # two integers, however long: compare their digits
        return pi == gi
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        if pn == gn:
            return True
        if pn.denominator == 1 and gn.denominator == 1 and "." not in p + g:
            return False  # two different integers: nothing symbolic can make them equal
    if len(pred) > MAX_ANSWER_CHARS:
        return False  # not the reference's spelling, and too long for math-verify to parse in time
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
    return (verifier or default_verifier()).verify(_cas_spelling(pred), _cas_spelling(gold))


def _cas_spelling(answer: str) -> str:
    """`answer` as math-verify should read it: the README's number spellings made explicit (it reads `1 000`
    as 0 and `4 4/9` as 8/9), units dropped by our rules only (its own list drops `c`, `d`, `ab`, ...),
    constants bare (it drops `\\mathrm{i}` like a unit)."""
    s = _CONSTANT_RE.sub(r"\1", answer.strip().replace(_MINUS, "-"))
    s = _BARE_UNIT_RE.sub(r"\1", _drop_unit(s))
    number = read_number_run(s)
    if number is not None and " " in number and len(number) <= _MAX_DIGITS:
        whole, frac = number.rsplit(" ", 1)
        num, den = (int(x) for x in frac.split("/"))
        value = (-1 if whole.startswith("-") else 1) * (abs(int(whole)) + Fraction(num, den))
        return rf"\frac{{{value.numerator}}}{{{value.denominator}}}"
    return number if number is not None else s


def grade_math(response: str, answer: str, verifier: MathVerifier | None = None, *,
               boxed_only: bool = False) -> bool:
    """The verifiable reward: does `response`'s final answer equal the reference `answer`?"""
    pred = extract_answer(response, boxed_only=boxed_only)
    return pred is not None and answers_match(pred, answer, verifier)
