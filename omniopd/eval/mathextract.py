r"""Where a math response's final answer is, and what it is: always a whole expression or number.

`extract_answer` looks, in order (GSM8K's calculator annotations `<<5*3=15>>` removed first), for
1. the last complete `\boxed{}` / `\fbox{}` (a box opened and never closed: no answer, the response was cut);
2. GSM8K's "#### X", then the last answer phrase ("The (final) answer is X", "Answer: X", "Final Answer: X",
   markdown bold allowed), which takes the expression or number it introduces: a `$…$`-style span, or the
   plain expression up to the first word, so units and trailing words are dropped ("113 apples." -> 113);
   when the phrase introduces a sentence ("The largest $n$ is 34."), that sentence's last span or standalone
   number, whichever ends later;
3. the last bold number `**X**`;
4. the last whole math span (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`, `align*`-style environments) that states
   something (`span_answer`; a lone variable `$n$` is a mention), or the last paragraph when it is one bare
   expression with no words (`\frac{1}{3}`). `\$15` and money dollars (`_is_currency`) open no span; a span
   left open at the end of a cut-off response gives no answer, as a cut-off box does;
5. the last standalone number: a number run bounded by whitespace, the start, `=` or a money `$` before it
   and whitespace, the end or sentence punctuation after it (a `%`, `$`, known unit `2cm`, ordinal `6th` or
   rate `18,000/year` may follow). A number inside a word (`AZYUK2A`), inside braces or brackets
   (`\frac{1}{3}`, `(3, 4)`) or glued to other letters (`2x`) is never one.
Number runs are read whole wherever they are found (`read_number_run`): `1,000` and `1 000` are 1000,
`4 4/9`, `-4 4/9` and `+11 5/6` are mixed numbers; any other run of space-separated numbers (`12 34`,
`11 6/6`) is ambiguous, is no number and is kept as written (graded equal only to the same spelling).
Everything here is linear in the response length.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH_RE = re.compile(r"####[ \t]*([^\n]+)")
# "answer" then "is" / ":" / "=", markdown bold allowed around it ("**Final Answer:** 42", "**Answer**: 42");
# "isn't" opens no phrase.
_ANSWER_RE = re.compile(r"(?:final answer|answer)[*_]*\s*(?:is(?![\w'\u2019])|:|=)[*_]*\s*:?", re.IGNORECASE)
_MINUS = "\u2212"  # Unicode minus: a model writing "−5" means -5
_SPACES = " \u00a0\u2009\u202f"  # a space, no-break space, thin spaces: SI digit-group separators

# One number token (digits, decimal point, `,` groups, `/`, an exponent), and a run of them joined by a space.
_TOKEN = r"\d(?:[\d,./]*\d)?(?:[eE][-+]?\d+)?"
_RATE_RE = re.compile(r"/[A-Za-z]{2,}")
_RUN_RE = re.compile(rf"[-+{_MINUS}]?{_TOKEN}(?:[{_SPACES}]{_TOKEN})*")
_SINGLE_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\d+/\d+)")
_GROUPED_RE = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED_RE = re.compile(r"(-?)(\d+) (\d+)/(\d+)")
ORDINALS = frozenset({"st", "nd", "rd", "th"})  # "6th" is 6 ("she finished 6th")
# Units read as dropped when glued to a number ("2cm") or following it as a word ("34 cm", "5 m").
UNITS = frozenset({"mm", "cm", "dm", "km", "m", "mg", "g", "kg", "ml", "mL", "L", "l", "s", "ms", "sec", "min", "h",
                   "hr", "hrs", "ft", "in", "yd", "mi", "lb", "lbs", "oz"})
# Letter tokens that are mathematics, not words ("2 pi", "sqrt(2)").
_MATH_WORDS = frozenset({"pi", "sqrt", "sin", "cos", "tan", "cot", "log", "ln", "exp", "inf", "infinity", "mod"})
_COMMAND_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|mathbf|operatorname|begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
_LETTERS_RE = re.compile(r"[A-Za-z]*[a-z][A-Za-z]*")  # a run with a lower-case letter ("ABC" is points)
_TRAILING_PUNCT = ".,;:!?*_\"'"


def _closing_braces(text: str) -> dict[int, int]:
    """For every grouping `{` that is closed, the index of its `}`: one linear pass with a stack.

    `\\{` and `\\}` are literal braces, not grouping. One pass for all boxes keeps extraction linear even on
    a long response full of unclosed `\\boxed{` (each box scanning to the end would be quadratic).
    """
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"\\\\.|[{}]", text, re.DOTALL):
        ch = m.group(0)
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            closing[stack.pop()] = m.start()
    return closing


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}` (also `\\boxed 5`), or None."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    closing = _closing_braces(text)
    for match in reversed(matches):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            end = closing.get(i)
            if end is not None:
                return text[i + 1:end].strip()
        elif i > match.end():  # "\boxed 5": the token after the space
            token = re.match(r"[^\s$]{1,1000}", text[i:i + 1000])
            if token:
                return token.group(0)
    return None


# ---- numbers ---------------------------------------------------------------------------------------

def read_number_run(run: str) -> str | None:
    """The number a run of number tokens spells, canonically ("1,000" -> "1000", "+11 5/6" -> "11 5/6"),
    or None when the run is not one number ("12 34", "11 6/6", "1,00", "1.2.3").

    Digit groups (`,` or a space, groups of three after the first) are one number; a whole number, a space and
    a proper fraction is a mixed number (kept as "W N/D", which `normalize` reads as W + N/D).
    """
    s = run.replace(_MINUS, "-")
    for space in _SPACES[1:]:
        s = s.replace(space, " ")
    if s.startswith("+"):
        s = s[1:]
    if " " not in s:
        if not _SINGLE_RE.fullmatch(s):
            return None
        return s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s) else s
    if _GROUPED_RE.fullmatch(s):
        return s.replace(" ", "")
    mixed = _MIXED_RE.fullmatch(s)
    if mixed and proper_fraction(mixed.group(3), mixed.group(4)):
        return s
    return None


def proper_fraction(numerator: str, denominator: str) -> bool:
    """numerator < denominator, for digit strings of any length (no int(): 4,300 digits would raise)."""
    n, d = numerator.lstrip("0"), denominator.lstrip("0")
    return (len(n), n) < (len(d), d)


def _glued_unit_end(text: str, i: int) -> int:
    """End of a known unit glued at text[i] ("cm" in "2cm"), or i when none (or when letters go on)."""
    m = re.match(r"[A-Za-z]+", text[i:i + 8])
    if m and (m.group(0) in UNITS or m.group(0) in ORDINALS):
        return i + m.end()
    return i


def _is_standalone(text: str, s: int, e: int) -> bool:
    """Is the number run text[s:e] standalone (see the module docstring), not part of a larger token?"""
    j = s  # left: markdown emphasis, then a money dollar, then whitespace / start / "="
    while j > 0 and s - j < 2 and text[j - 1] in "*_":
        j -= 1
    if j > 0 and text[j - 1] == "$":
        j -= 1 + (j > 1 and text[j - 2] == "\\")
    if j > 0 and not (text[j - 1].isspace() or text[j - 1] == "="):
        return False
    k = e  # right: a percent or dollar sign, a glued unit or rate, sentence punctuation, then space / end
    rate = _RATE_RE.match(text, k, k + 30)  # "18,000/year", "70/quiz"
    if k < len(text) and text[k] in "%$":
        k += 1
    elif rate:
        k = rate.end()
    elif k < len(text) and text[k].isalpha():
        k = _glued_unit_end(text, k)
        if k == e:
            return False  # "2x", "2a": the digits belong to a larger token
    while k < len(text) and text[k] in _TRAILING_PUNCT:
        k += 1
    return k == len(text) or text[k].isspace()


def _last_standalone_number(text: str) -> tuple[int, str] | None:
    """(start, number) of the last standalone number run of `text`, spelled by `read_number_run` (an
    ambiguous run as written), or None."""
    for m in reversed(list(_RUN_RE.finditer(text))):
        if _is_standalone(text, m.start(), m.end()):
            return m.start(), read_number_run(m.group(0)) or m.group(0)
    return None


# ---- math spans ------------------------------------------------------------------------------------

_ENVIRONMENTS = "align|aligned|equation|gather|gathered|eqnarray|multline"
_SPAN_TOKEN_RE = re.compile(rf"\\\\|\\\$|\$|\\\(|\\\)|\\\[|\\\]|\n|\\(?:begin|end)\{{(?:{_ENVIRONMENTS})\*?\}}")
_ENV_RE = re.compile(rf"\\begin\{{({_ENVIRONMENTS})\*?\}}(.*)\\end\{{\1\*?\}}", re.DOTALL)
_LATEX_FOLLOWS_RE = re.compile(r"[\\^_{]|[ \t]*[-+*/=<>][ \t]*[\\{]")
_MONEY_NEXT_RE = re.compile(r"\$[ \t]?(?:\.?\d|<<)")
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
_CURRENCY_RE = re.compile(r"[ \t]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)")
_CLOSER = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}


def _is_currency(text: str, i: int) -> bool:
    """Is the `$` at text[i] money ("costs $15.", "$3 and $4", "$8 / $2/day = 4 days", "20$") rather than
    the start of math?

    Money when the `$` follows a number ("20$, then"), or when a number follows it and no `$` closes it on
    its line (on the response's last line, unless LaTeX follows: "$15 + \\frac{" is a cut-off span), or the
    next `$` is money too ("$5*3 = $15"), or the text up to the next `$` has a word in it.
    """
    if text.startswith("<<", i + 1):
        return True  # GSM8K's "$<<5*3=15>>15"
    if i > 0 and text[i - 1].isdigit() and (i + 1 == len(text) or text[i + 1] in " \t\n.,;:!?)"):
        return True
    m = _CURRENCY_RE.match(text, i + 1)
    if m is None:
        return False
    k = m.end()
    # Each search stops at the next `$` (or newline before it): linear over all the dollars of a response.
    closing = _UNESCAPED_DOLLAR_RE.search(text, k)
    line_end = text.find("\n", k, closing.start() if closing else len(text))
    close = closing.start() if closing and line_end < 0 else -1
    if close < 0:
        if line_end >= 0:
            return True  # nothing closes it on its line
        return not _LATEX_FOLLOWS_RE.match(text, k, k + 40)  # LaTeX follows: a cut-off span
    if _MONEY_NEXT_RE.match(text, close, close + 4):
        return True  # the next `$` is money too ("$5*3 = $15", "$15 + $3")
    if text[k].isalpha():
        return False  # a letter glued to the number: "$2k+2$", "$2RC+R+C$", "$4.5e33$"
    return _has_prose(text[i + 1:close])  # "$15 and then $x$" is money, "$3, 5, 7$" and "$3 n$" are math


def math_spans(text: str) -> tuple[list[tuple[int, str]], bool]:
    """([(start, content)] of every closed math span in order, whether a span is left open at the end).

    Escaped `\\$` and currency dollars open nothing; an inline `$` span never crosses a line break (a stray
    `$` before it opened nothing); `$$`, `\\(`, `\\[` and display environments (`align*`, ...) may.
    """
    spans: list[tuple[int, str]] = []
    opener, start, content_start = None, 0, 0
    skip_to = 0
    for m in _SPAN_TOKEN_RE.finditer(text):
        i, tok = m.start(), m.group(0)
        if i < skip_to or tok in ("\\\\", "\\$"):
            continue
        if opener is None:
            if tok == "$":
                if text.startswith("$$", i):
                    opener, start, content_start, skip_to = "$$", i, i + 2, i + 2
                elif not _is_currency(text, i):
                    opener, start, content_start = "$", i, i + 1
            elif tok in ("\\(", "\\["):
                opener, start, content_start = tok, i, i + 2
            elif tok.startswith("\\begin"):  # a display environment: its text, \begin and \end included
                opener, start, content_start = "\\end" + tok[len("\\begin"):], i, i
            continue
        if tok == "\n":
            if opener == "$":
                opener = None  # a stray `$`: the line it "opened" was plain text
            continue
        if opener == "$$" and tok == "$" and text.startswith("$$", i):
            spans.append((start, text[content_start:i].strip()))
            opener, skip_to = None, i + 2
        elif opener.startswith("\\end") and tok == opener:
            spans.append((start, text[content_start:m.end()].strip()))
            opener = None
        elif tok == _CLOSER.get(opener):  # "$" closing "$", "\\)" closing "\\(", "\\]" closing "\\["
            spans.append((start, text[content_start:i].strip()))
            opener = None
    return spans, opener is not None


def span_answer(content: str) -> str:
    """The answer a math span states: a display environment's last row ("x &= 2" of an `align*`), without a
    leading arrow or "=", trailing punctuation ("$3.$" -> 3) or alignment marks; the number that
    arithmetic arrives at ("2 \\cdot 120 = 240" -> 240; an equation with a variable, "x = 3", stays whole and
    is compared by its right-hand side)."""
    env = _ENV_RE.fullmatch(content.strip())
    if env:
        rows = [row for row in re.split(r"\\\\(?:\[[^\]]*\])?", env.group(2)) if row.strip()]
        content = rows[-1].replace("&", "") if rows else ""
    content = re.sub(r"^\s*(?:\\(?:Rightarrow|Longrightarrow|implies|therefore)\b|=)\s*", "", content)
    content = content.strip().rstrip(".,;:").strip()
    arithmetic, _, value = content.rpartition("=")  # "2\cdot 5! = 240": the value the arithmetic arrives at
    if (arithmetic and not re.search(r"[A-Za-z]", _COMMAND_RE.sub(" ", arithmetic))
            and read_number_run(re.sub(r",\\!\s*|\{,\}", ",", value.strip()).removeprefix("\\$")) is not None):
        return value.strip()
    return content


_LONE_VARIABLE_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?")


def _last_stated_span(spans: list[tuple[int, str]]) -> str | None:
    """The last span that states something: "there are $7$ values of $n$" gives 7, not the variable n
    (a lone variable is a mention; it is the answer only when every span is one)."""
    fallback = None
    for _, content in reversed(spans):
        answer = span_answer(content)
        if answer and not _LONE_VARIABLE_RE.fullmatch(answer):
            return answer
        fallback = fallback or answer
    return fallback or None


def _has_prose(text: str) -> bool:
    return any(_is_word(t) for t in _COMMAND_RE.sub(" ", text).split())


# ---- expressions in plain text ---------------------------------------------------------------------

def _is_word(token: str) -> bool:
    """A token of prose ("apples.", "cm", "AZYUK2A"), as opposed to mathematics ("x+1", "2\\sqrt{3}", "5")."""
    bare = _COMMAND_RE.sub(" ", token.strip(_TRAILING_PUNCT + "()"))
    return any(len(w) > 1 and w.lower() not in _MATH_WORDS for w in _LETTERS_RE.findall(bare))


class _Cut(Exception):
    """The answer phrase introduces a math span that never closes: the response was cut off."""


def _introduced(tail: str) -> str | None:
    """The expression or number `tail` (the text after an answer phrase) starts with, or None.

    A leading math span is taken whole; else plain tokens up to the first word, sentence punctuation or unit.
    A list ("2 or 3", "3, 4") is kept whole so that it never grades equal to one of its items. A tail that
    starts with words gives its sentence's last span or standalone number. Raises `_Cut` on an unclosed span.
    """
    tail = tail.lstrip(" \t\n*_:")
    if tail.startswith(("$", "\\(", "\\[")) and not _is_currency(tail, 0):
        spans, unclosed = math_spans(tail)
        if spans and spans[0][0] == 0:
            return span_answer(spans[0][1]) or None
        if unclosed:
            raise _Cut
    line = tail.split("\n", 1)[0]
    tokens = line.split()
    taken: list[str] = []
    for n, token in enumerate(tokens):
        unit = taken and token.rstrip(_TRAILING_PUNCT) in UNITS  # "34 cm", "5 m."
        article = (not taken and len(token) == 1 and token.isalpha() and n + 1 < len(tokens)
                   and _is_word(tokens[n + 1]))  # "a prime", "I think"
        if _is_word(token) or unit or article:
            if taken and token.lower() in ("and", "or") and n + 1 < len(tokens) and not _is_word(tokens[n + 1]):
                return _sentence(line)  # "2 or 3": a list, kept whole
            break
        taken.append(token)
        if token[-1] in ".,;:!?":
            if token[-1] == "," and n + 1 < len(tokens) and not _is_word(tokens[n + 1]):
                return _sentence(line)  # "3, 4": a list, kept whole
            break
    if taken:
        expression = " ".join(taken).rstrip(_TRAILING_PUNCT).strip()
        return re.sub(r"^\\?\$(?=\s?\d)", "", expression).strip() or None  # currency: "$15" -> 15
    sentence = _sentence(line)
    spans, unclosed = math_spans(sentence)
    if unclosed and not spans:
        raise _Cut
    number = _last_standalone_number(sentence)
    items = [(start, span_answer(c)) for start, c in spans] + ([number] if number else [])
    return max(items)[1] if items else None


def _sentence(line: str) -> str:
    """`line` up to its first full stop (not a decimal point), without trailing punctuation."""
    return re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip().rstrip(_TRAILING_PUNCT).strip()


def _bare_expression(text: str) -> str | None:
    """The response's last paragraph when it is one expression without words (`\\frac{1}{3}`, a matrix)."""
    stripped = re.split(r"\n[ \t]*\n", text.strip())[-1].strip().rstrip(".").strip()
    if not stripped or len(stripped) > 1000 or _has_prose(stripped):
        return None
    return read_number_run(stripped) or stripped


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - the loop only walks to the last match
        pass
    return last


def _last_answer_phrase(response: str) -> str | None:
    """The text after the last answer phrase, nested phrases included (Minerva's
    "Final Answer: The final answer is $42$. I hope it is correct.")."""
    last = _last_match(_ANSWER_RE, response)
    if last is None:
        return None
    tail = response[last.end():]
    for _ in range(10):  # each step strictly shortens `tail`; a few suffice for any real response
        head = tail.split("\n", 1)[0]
        inner = _last_match(_ANSWER_RE, head)
        if inner is None:
            break
        tail = tail[inner.end():]
    return tail


def extract_answer(response: str, *, boxed_only: bool = False) -> str | None:
    """The final answer written in `response` (see the module docstring), or None when there is none.

    `boxed_only`: no fallbacks — a weak model's last number can match the reference by accident.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if boxed_only or _BOX_RE.search(response):
        return None  # a box was opened but never closed: the response was cut off before its answer
    response = _CALCULATOR_RE.sub("", response)  # GSM8K's "<<5*3=15>>15": the annotation is not text
    try:
        found = _HASH_RE.findall(response)
        if found:
            answer = _introduced(found[-1])
            if answer:
                return answer
        tail = _last_answer_phrase(response)
        if tail is not None:
            answer = _introduced(tail)
            if answer:
                return answer
    except _Cut:
        return None
    for bold in reversed(_BOLD_RE.findall(response)):  # "so the total is **42**."
        number = read_number_run(bold.strip().rstrip("."))
        if number is not None:
            return number
    spans, unclosed = math_spans(response)
    if unclosed:
        return None  # cut off inside a math span
    if spans:
        return _last_stated_span(spans)
    bare = _bare_expression(response)
    if bare is not None:
        return bare
    number = _last_standalone_number(response)
    return number[1] if number else None


_CALCULATOR_RE = re.compile(r"<<[^<>\n]{0,200}>>")
_BOLD_RE = re.compile(r"\*\*\s*\$?\s*([^*\n$]{1,100}?)\s*\$?\s*\*\*")


def gold_from_solution(solution: str) -> str | None:
    """Reference answer of a worked solution: its last box, else a GSM8K-style "#### N"."""
    boxed = last_boxed(solution)
    if boxed is not None:
        return boxed
    found = _HASH_RE.findall(solution)
    return found[-1].strip().replace(",", "") if found else None
