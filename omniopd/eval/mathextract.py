r"""Where a math response's final answer is, and what it is: always a whole expression or number.

`extract_answer` looks, in order (GSM8K's calculator annotations `<<5*3=15>>` removed first), for
1. the last complete `\boxed{}` / `\fbox{}` (a box opened and never closed: no answer, the response was cut);
2. GSM8K's "#### X", then the last answer phrase ("The (final) answer is X", "Answer: X", "Final Answer: X",
   markdown bold allowed; not after "If ..."), which takes the expression or number it introduces: a `$…$`-style
   span, or the plain expression up to the first word; unit and noun words after it are dropped ("113
   apples." -> 113), quantity/operation/comparison words are not ("2 million", "2 or more": no answer);
   when the phrase introduces a sentence ("The largest $n$ is 34."), that sentence's last span or standalone
   number when it ends the sentence, none after a negation or comparison ("not 2", "at least 2"). A phrase
   that gives no answer leaves only the text after it to the fallbacks;
3. the last bold number `**X**` (not a list marker `**1.**`);
4. the last whole math span (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`, `align*`-style environments) that states
   something (`span_answer`; a lone variable `$n$` is a mention; a value ending a list `$2$ and $3$` is none)
   or the last standalone number after it, whichever ends later; with no span, the last paragraph when it is
   one bare expression with no words (`\frac{1}{3}`). `\$15` and money dollars (`_is_currency`) open no
   span; a span left open at the end of a cut-off response gives no answer, as a cut-off box does;
5. the last standalone number: a number run bounded by whitespace, the start, an operator or a money `$`
   before it and whitespace, the end, an operator or sentence punctuation after it (a `%`, `$`, known unit
   `2cm`, ordinal `6th` or rate `18,000/year` may follow). A number inside a word (`AZYUK2A`), inside braces
   or brackets (`\frac{1}{3}`, `(3, 4)`) or glued to other letters (`2x`) is never one. Next to an operator,
   relation or function word it is an operand: the whole expression is the answer (`_expression_around`),
   or none when it cannot be read or is a list ("2 and 3" is never 3).
Number runs are read whole wherever they are found (`read_number_run`): `1,000` and `1 000` are 1000,
`4 4/9`, `-4 4/9` and `+11 5/6` are mixed numbers; any other run of space-separated numbers (`12 34`,
`11 6/6`) is ambiguous, is no number and is kept as written (graded equal only to the same spelling).
Everything here is linear in the response length.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_OPEN_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASH_RE = re.compile(r"####[ \t]*([^\n]+)")
# "answer" then "is" / ":" / "=", markdown bold allowed around it ("**Final Answer:** 42", "**Answer**: 42");
# "isn't" opens no phrase.
_ANSWER_RE = re.compile(r"(?:final answer|answer)[*_]*\s*(?:is(?![\w'\u2019])|:|=)[*_]*\s*:?", re.IGNORECASE)
_MINUS = "\u2212"  # Unicode minus: a model writing "−5" means -5
_SPACES = " \u00a0\u2009\u202f"  # a space, no-break space, thin spaces: SI digit-group separators

# One number token (digits, decimal point, `,` groups, `/`, an exponent), and a run of them joined by a space.
_TOKEN = r"\d(?:[\d,./]*\d)?(?:[eE][-+]?\d+)?"
_RATE_RE = re.compile(r"/(?:[A-Za-z]{3,}|hr|yr|wk|mo|km|kg|mi|ft|lb|oz|ml|mL|in|mm|cm)(?![A-Za-z])")
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
    """Is the number run text[s:e] a token of its own (see the module docstring), not part of a larger
    token? Operators around it are `_expression_around`'s business: a space or one of them may bound it."""
    j = s  # left: markdown emphasis, then a money dollar, then whitespace / start / an operator
    while j > 0 and s - j < 2 and text[j - 1] in "*_":
        j -= 1
    if j > 0 and text[j - 1] == "$":
        j -= 1 + (j > 1 and text[j - 2] == "\\")
    if j > 0 and not (text[j - 1].isspace() or text[j - 1] in _OPERATOR_CHARS):
        return False
    if j > 1 and text[j - 1] in ":~" and text[j - 2].isalpha():
        return False  # "wUX:331", "n~7": one token, not a label or a relation
    k = e  # right: a percent or dollar sign, a glued unit or rate, sentence punctuation, then space / end
    rate = _RATE_RE.match(text, k, k + 30)  # "18,000/year", "70/quiz"
    if k < len(text) and text[k] in "%$":
        k += 1
    elif rate and rate.group(0)[1:].lower() not in _MATH_WORDS:
        k = rate.end()
    elif k < len(text) and text[k].isalpha():
        k = _glued_unit_end(text, k)
        if k == e:
            return False  # "2x", "2a": the digits belong to a larger token
    while k < len(text) and text[k] in _TRAILING_PUNCT:
        k += 1
    return k == len(text) or text[k].isspace() or text[k] in _OPERATOR_CHARS


# Operators and relations that make a number an operand ("3 + 2", "x >= 2", "2 : 5", "√ 2"), and words that
# do ("sqrt 2", "minus 2", "2 times 3"). A number next to one (spaces aside) is never an answer of its own.
_MINUS_CHARS = "-+" + _MINUS
_OPERATOR_CHARS = "+-*/^=<>:~\u2248\u00d7\u00f7\u2264\u2265\u2260\u221a\u00b7" + _MINUS
_OP = r"\*\*|!=|>=|<=|=>|[-+*/^=<>:~\u2248\u00d7\u00f7\u2264\u2265\u2260\u221a\u00b7\u2212]"
_FUNCTION_WORDS = ("sqrt|log|ln|sin|cos|tan|exp|minus|negative|plus|times|over|divided by|multiplied by|squared"
                   "|cubed|x"
                   "|to the power of|root of|square root of")
_LEFT_OP_RE = re.compile(rf"(?:({_OP})|(?<![A-Za-z])({_FUNCTION_WORDS}))[ \t]*\Z", re.IGNORECASE)
_RIGHT_OP_RE = re.compile(rf"[ \t]*(?:({_OP})|({_FUNCTION_WORDS})(?![A-Za-z]))", re.IGNORECASE)
# An operand next to an operator: a number (money `$`, a rate or unit glued), a single-letter variable, pi.
_SUFFIX_ALTERNATION = "|".join(sorted(UNITS | ORDINALS, key=len, reverse=True))
_NUMBER_OPERAND = rf"(?:\\?\$)?\d[\d,.]*(?:/[A-Za-z]{{2,}}|%|(?:{_SUFFIX_ALTERNATION})(?![A-Za-z]))?"
_VARIABLE_OPERAND = r"(?<![A-Za-z\\])(?:[A-Za-z]|pi|\u03c0)(?![A-Za-z])"
_LEFT_OPERAND_RE = re.compile(rf"(?:(?<![\d.,]){_NUMBER_OPERAND}|{_VARIABLE_OPERAND})[ \t]*\Z")
_RIGHT_OPERAND_RE = re.compile(rf"[ \t]*(?:{_NUMBER_OPERAND}|(?:[A-Za-z]|pi|\u03c0)(?![A-Za-z]))")
_LIST_BEFORE_RE = re.compile(r"(?:\d[%$]?|(?<![A-Za-z])[A-Za-z]|\$)"
                             r"(?:[ \t]*,[ \t]*(?:(?:and|or)[ \t])?|[ \t]+(?:and|or)[ \t])[ \t]*\Z")
_SPOKEN = {"negative": "-", "x": "\\times", "~": "\u2248", "\u2248": "\u2248",
           "minus": "-", "plus": "+", "times": "*", "over": "/", "divided by": "/", "multiplied by": "*",
           "sqrt": "\\sqrt ", "square root of": "\\sqrt ", "root of": "\\sqrt ", "log": "\\log ", "ln": "\\ln ",
           "sin": "\\sin ", "cos": "\\cos ", "tan": "\\tan ", "exp": "\\exp ", "squared": "^2", "cubed": "^3",
           "to the power of": "^", "**": "^", "\u00d7": "*", "\u00b7": "*", "\u00f7": "/", "\u2264": "\\le",
           "\u2265": "\\ge", "\u2260": "\\ne", "!=": "\\ne", ">=": "\\ge", "<=": "\\le", "=>": "\\ge",
           "\u221a": "\\sqrt ", "\u2212": "-", ":": "/", "\u03c0": "\\pi ", "pi": "\\pi "}
_UNARY = frozenset({"-", "+", "\u2212", "minus", "negative", "plus",
                    "sqrt", "square root of", "root of", "log", "ln", "sin",
                    "cos", "tan", "exp", "\u221a"})


# "2 to 5", "1 in 2", "1 out of 2": a range or a ratio, never its last number.
_RANGE_BEFORE_RE = re.compile(r"\d[%$]?[ \t]+(?:to|in|out of|through)[ \t]+\Z", re.IGNORECASE)
# "Step 2", "Case 2.", "box 2": a label's number is no answer.
_LABEL_BEFORE_RE = re.compile(r"(?<![A-Za-z])(?:step|case|section|part|question|problem|chapter|example|line|box|"
                              r"option|choice|figure|table|equation|no\.?|number)[ \t]*\**[ \t]*\Z", re.IGNORECASE)


_MAX_PIECES = 200  # operands and operators of a plain-text expression


class _NotAnOperand(Exception):
    """The number is glued into a word by a hyphen ("5-year-old"): not a number at all."""


def _expression_around(text: str, s: int, e: int) -> tuple[int, int, str | None]:
    """(start, end, answer) of the plain-text expression the standalone number text[s:e] belongs to.

    The answer is the number itself, the whole expression written as LaTeX ("3 + 2" -> "3 + 2", "x = - 2",
    "minus 2" -> "-2", "27 + 86 = 113" -> 113 via `span_answer`), or None when the expression cannot be read
    ("apples + 2") or is a list ("2 and 3", "x = 2 or x = 5": never its last item). A `=` or `:` after a word
    ("Total = 12", "Step: 3") is a label, not an operator. Raises `_NotAnOperand` for "5-year".
    """
    pieces: list[str] = [text[s:e]]
    start, end, operators = s, _suffix_end(text, e), False
    while True:  # leftwards: operator, then operand (or a unary operator / a label)
        if len(pieces) > _MAX_PIECES:
            return start, end, None  # no answer is that long; the bound keeps extraction linear
        window = text[max(0, start - 40):start]
        op = _LEFT_OP_RE.search(window)
        if op is None:
            break
        token = (op.group(1) or op.group(2)).lower()
        op_start = start - (len(window) - op.start())
        if token in ("*", "**") and op_start > 0 and (text[op_start - 1].isalnum() or text[op_start - 1] == "*"):
            break  # "**Final Answer** 5": markdown bold, not a product
        before = text[max(0, op_start - 40):op_start]
        operand = _LEFT_OPERAND_RE.search(before)
        if operand is None or (token in (":", "=") and operand.group(0).strip()[:1].isalpha()
                               and op_start > 0 and text[op_start - 1].isalpha()):
            if token in (":", "="):
                break  # "Total = 12", "Step 2: 3" stays a number after its label
            binary = token in _MINUS_CHARS and before.rstrip(" \t")[-1:] not in ("", *_OPERATOR_CHARS)
            if token in _UNARY and not binary:  # "= - 2", "minus 2"; "apples + 2" is binary
                pieces.insert(0, _SPOKEN.get(token, token))
                start, operators = op_start, True
                continue
            if "=" in pieces:  # "8 lessons * 3 cleans = 24": words in the arithmetic, the "=" states the value
                cut = len(pieces) - pieces[::-1].index("=")
                pieces, operators = pieces[cut:], len(pieces) - cut > 1
                start = text.rfind("=", 0, s) + 1
                break
            return start, end, None  # "apples + 2": an operand that is not mathematics
        if (_RANGE_BEFORE_RE.search(text, max(0, op_start - 40), op_start)
                or (token == "x" and not operand.group(0).lstrip("\\$")[:1].isdigit())):
            return start, end, None  # "2 to 5 - 1"; "x" is a times sign only between numbers
        pieces[:0] = [operand.group(0).strip(), token if token == "=" else _SPOKEN.get(token, token)]
        start, operators = op_start - (len(before) - operand.start()), True
    while True:  # rightwards
        if len(pieces) > _MAX_PIECES:
            return start, end, None
        op = _RIGHT_OP_RE.match(text, end, end + 40)
        if op is None:
            break
        token = (op.group(1) or op.group(2)).lower()
        if token in ("squared", "cubed"):
            pieces.append(_SPOKEN[token])
            end, operators = op.end(), True
            continue
        operand = _RIGHT_OPERAND_RE.match(text, op.end(), op.end() + 40)
        if operand is None:
            if token == ":" or op.group(2):
                break  # "2: then ..." a label-like colon; "22 times." a noun
            if token in "-\u2212" and op.start() == end and op.end() < len(text) and text[op.end()].isalpha():
                if not operators:
                    raise _NotAnOperand
                return start, end, None
            if token in "-+*" and (op.end() == len(text) or not text[op.end()].isalnum()):
                break  # "**2**": markdown, "2 -- done"
            return start, end, None
        pieces += [token if token == "=" else _SPOKEN.get(token, token), operand.group(0).strip()]
        end, operators = _suffix_end(text, operand.end()), True
    listed = _LIST_BEFORE_RE.search(text, max(0, start - 40), start)
    if ((listed and ("=" not in pieces or "," not in listed.group(0)))  # "Out of the 200, 200 x 4/5 = 160"
            or _RANGE_BEFORE_RE.search(text, max(0, start - 40), start)):
        return start, end, None  # the last item of a list, a range ("2 to 5") or a ratio ("1 in 2")
    if end < len(text) and text[end] == "!" and re.match(r"! +[a-z]", text[end:end + 3]):
        pieces.append("!")  # "we get 3! ways": a factorial
        end, operators = end + 1, True
    if not operators:
        return start, end, read_number_run(pieces[0]) or pieces[0]
    latex = [_latex_operand(p) for p in pieces]
    if "\u2248" in latex:  # "4π ≈ 12.57" arrives at 12.57; "x ~ 2", "n ≈ 7" state no answer
        lhs, _, rhs = " ".join(latex).rpartition("\u2248")
        value = read_number_run(rhs.strip())
        arithmetic = not re.search(r"[A-Za-z]", lhs.replace("\\pi", "")) and "\u2248" not in lhs
        return start, end, value if value is not None and arithmetic and "~" not in text[start:end] else None
    if "=" in latex:  # "2V = 2 * 11 = 22": the value the last arithmetic arrives at
        segments = " ".join(latex).split("=")
        value = read_number_run(segments[-1].strip())
        if value is not None and not re.search(r"[A-Za-z]", _COMMAND_RE.sub(" ", segments[-2])):
            return start, end, value
    return start, end, span_answer(" ".join(latex))


def _suffix_end(text: str, e: int) -> int:
    """End of what is glued after a number ending at `e`: a rate ("/year"), `%`, `$`, a unit or ordinal."""
    rate = _RATE_RE.match(text, e, e + 30)
    if rate and rate.group(0)[1:].lower() not in _MATH_WORDS:
        return rate.end()
    if e < len(text) and text[e] in "%$":
        return e + 1
    return _glued_unit_end(text, e) if e < len(text) and text[e].isalpha() else e


def _latex_operand(piece: str) -> str:
    if piece in ("pi", "\u03c0"):
        return "\\pi "
    if not re.search(r"\w", piece):
        return piece  # an operator
    piece = re.sub(r"^\\?\$", "", piece)
    piece = re.sub(r"(?<=\d)(?:/[A-Za-z]{2,}|[A-Za-z]{1,3})$",
                   lambda m: "" if m.group(0).lstrip("/") in UNITS | ORDINALS or "/" in m.group(0) else m.group(0),
                   piece)
    return read_number_run(piece) or piece


def _last_standalone_number(text: str, after: int = 0) -> tuple[int, int, str | None] | None:
    """(start, end, answer) of the expression around the last standalone number run of text[after:]
    (`_expression_around`: the number spelled by `read_number_run`, an ambiguous run as written, or the
    whole expression), or None when there is no standalone number."""
    runs = list(_RUN_RE.finditer(text, after))
    for m in reversed(runs):
        s, e = m.start(), m.end()
        if text[s] in _MINUS_CHARS and s > 0 and (not text[s - 1].isspace() or text[:s].rstrip()[-1:].isdigit()):
            s += 1  # "2-3", "2 -1/2": the "-" is an operator, not the sign of what follows
        if _LABEL_BEFORE_RE.search(text, max(0, s - 40), s):
            continue  # "Step 2", "Case 2.": a label's number
        if _is_standalone(text, s, e):
            try:
                return _expression_around(text, s, e)
            except _NotAnOperand:
                continue
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


def math_spans(text: str) -> tuple[list[tuple[int, int, str]], bool]:
    """([(start, end, content)] of every closed math span in order, whether a span is left open at the end).

    Escaped `\\$` and currency dollars open nothing; an inline `$` span never crosses a line break (a stray
    `$` before it opened nothing); `$$`, `\\(`, `\\[` and display environments (`align*`, ...) may.
    """
    spans: list[tuple[int, int, str]] = []
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
            spans.append((start, i + 2, text[content_start:i].strip()))
            opener, skip_to = None, i + 2
        elif opener.startswith("\\end") and tok == opener:
            spans.append((start, m.end(), text[content_start:m.end()].strip()))
            opener = None
        elif tok == _CLOSER.get(opener):  # "$" closing "$", "\\)" closing "\\(", "\\]" closing "\\["
            spans.append((start, m.end(), text[content_start:i].strip()))
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
_LIST_JOIN_RE = re.compile(r"[ \t]*,[ \t]*|,?[ \t]+(?:and|or)[ \t]+")
_ROOT_RE = re.compile(r"([A-Za-z])\s*=\s*[^=<>]+")
_RELATION_RE = re.compile(r"[=<>]|\\(?:le|ge|ne|neq|leq|geq|in)\b")


def _last_stated_span(text: str, spans: list[tuple[int, int, str]]) -> tuple[int, str | None] | None:
    """(end, answer) of the last span that states something: "there are $7$ values of $n$" gives 7, not the
    variable n (a lone variable is a mention; it is the answer only when every span is one). A value that ends
    a list of values ("$2$ and $3$") is no answer: never a list's last item ("$k=1$ and $k=2$" states facts)."""
    fallback = None
    for n in range(len(spans) - 1, -1, -1):
        start, end, content = spans[n]
        answer = span_answer(content)
        if answer and not _LONE_VARIABLE_RE.fullmatch(answer):
            previous = span_answer(spans[n - 1][2]).rstrip(".,;") if n > 0 else ""
            values = (previous and not _RELATION_RE.search(answer) and not _RELATION_RE.search(previous)
                      and not _LONE_VARIABLE_RE.fullmatch(previous))
            root, previous_root = _ROOT_RE.fullmatch(answer), _ROOT_RE.fullmatch(previous)
            same_variable = root and previous_root and root.group(1) == previous_root.group(1)
            if n > 0 and _LIST_JOIN_RE.fullmatch(text, spans[n - 1][1], start) and (values or same_variable):
                return end, None
            return end, answer
        fallback = fallback or ((end, answer) if answer else None)
    return fallback


def _has_prose(text: str) -> bool:
    return any(_is_word(t) for t in _COMMAND_RE.sub(" ", text).split())


# ---- expressions in plain text ---------------------------------------------------------------------

def _is_word(token: str) -> bool:
    """A token of prose ("apples.", "cm", "AZYUK2A"), as opposed to mathematics ("x+1", "2\\sqrt{3}", "5")."""
    bare = _COMMAND_RE.sub(" ", token.strip(_TRAILING_PUNCT + "()"))
    return any(len(w) > 1 and w.lower() not in _MATH_WORDS for w in _LETTERS_RE.findall(bare))


# Words after a number that change what it means: a quantity ("2 million"), an operation ("2 times 3"), a
# range or comparison ("2 to 3", "2 or more"). The number is then not the answer, and neither is anything else.
QUANTITY_WORDS = frozenset({
    "hundred", "hundreds", "thousand", "thousands", "million", "millions", "billion", "billions", "trillion",
    "dozen", "dozens", "score", "plus", "minus", "times", "over", "divided", "multiplied", "squared", "cubed",
    "to", "or", "and", "by", "more", "less", "fewer", "at", "between", "not", "than", "per", "x", "of",
    "factorial", "percent"})
# Words that take the phrase back ("The answer is 7 but ... actually it is 9"): the text after them decides.
_RETRACTIONS = frozenset({"but", "wait", "actually", "however", "hmm", "although", "though", "unless", "no"})
# Short words that are prose, not variables, after a number ("5 is the answer").
_SMALL_WORDS = frozenset({"sq", "a", "an", "is", "it", "as", "so", "if", "we", "in", "on", "i", "am", "be", "my",
                          "he", "do", "us"})
# Before the number, these make the phrase a negation or a comparison: no answer ("is not 2", "at least 2").
_NEGATION_RE = re.compile(r"\b(?:not|no|isn'?t|never|at\s+(?:least|most)|(?:less|more|fewer|greater|smaller|larger|"
                          r"bigger|higher|lower)\s+than|between|exceeds?)\b|[<>\u2264\u2265]", re.IGNORECASE)
# An answer phrase after these is a supposition, not an answer ("If the answer is 7, then ...").
_SUPPOSITION_RE = re.compile(r"\b(?:if|suppose|assume|assuming|whether|check)\s+(?:that\s+)?(?:the|my|our)?\s*"
                             r"(?:final\s+)?\Z", re.IGNORECASE)


def is_unit_phrase(words: str) -> bool:
    """Are `words` after a number dropped as its unit (`34 cm`, `113 apples`, `10\\text{ cm}`)? Plain nouns
    and units are; a quantity, operation or comparison word (`million`, `times`, `or more`, `at most`) never,
    nor a one- or two-letter token that is no unit (`2 ab` is a product)."""
    raw_tokens = [re.sub(r"\^\{?[23]\}?$|[\u00b2\u00b3]$", "", t) for t in words.split()]
    raw_tokens = [part for t in raw_tokens for part in (t.split("/") if t.count("/") == 1 else [t])]
    if len(raw_tokens) > 1 and raw_tokens[-1].strip(_TRAILING_PUNCT).lower() in ("squared", "cubed"):
        raw_tokens.pop()  # "2 units squared"; "2 squared" alone is an operation
    tokens = [t.strip(_TRAILING_PUNCT).lower() for t in raw_tokens]
    if not tokens or len(tokens) > 3:
        return False
    for raw, token in zip(raw_tokens, tokens, strict=True):
        if not token.isalpha() or token in QUANTITY_WORDS or token in _RETRACTIONS:
            return False
        if len(token) <= 2 and raw.strip(_TRAILING_PUNCT) not in UNITS | ORDINALS and token not in _SMALL_WORDS:
            return False
    return True


class _Cut(Exception):
    """The answer phrase introduces a math span that never closes: the response was cut off."""


def _introduced(tail: str) -> tuple[str | None, int]:
    """(answer, consumed): the expression or number `tail` (the text after an answer phrase) introduces, and
    how much of `tail` the phrase speaks for (when there is no answer, only the text after that may give one).

    A leading math span is taken whole; else plain tokens up to the first word, sentence punctuation or unit.
    Trailing nouns and units are dropped (`is_unit_phrase`); a quantity or operation word after the number
    ("2 million", "2 times 3", "2 or more"), a second number after a unit ("2 h 30 min") or a variable
    ("2 ab") leaves no answer, a retraction ("7 but ...") leaves the rest of the text to decide. A list
    ("2 or 3", "3, 4") is kept whole so that it never grades equal to one of its items. A tail that starts
    with words is a sentence: a negation or comparison before its number ("not 2", "at least 2") is no
    answer, else its last span or standalone number when that ends the sentence ("The largest $n$ is 34.").
    Raises `_Cut` on an unclosed span.
    """
    offset = len(tail) - len(tail.lstrip(" \t\n*_:"))
    tail = tail[offset:]
    line = tail.split("\n", 1)[0]
    sentence_end = offset + len(_sentence_text(line))
    if tail.startswith(("$", "\\(", "\\[")) and not _is_currency(tail, 0):
        spans, unclosed = math_spans(tail)
        if spans and spans[0][0] == 0:
            rest = re.match(r"[ \t]*([A-Za-z]+)", tail[spans[0][1]:])
            if rest and (rest.group(1).lower() in QUANTITY_WORDS or rest.group(1).lower() in _RETRACTIONS):
                return None, offset + spans[0][1]
            if re.match(r"[ \t]*(?:[,;][ \t]*)?(?:(?:and|or)[ \t]+)?\$", tail[spans[0][1]:]):
                return None, sentence_end  # "$2$, $3$", "$2$$\times 10^6$": a list, or a span goes on
            return span_answer(spans[0][2]) or None, offset + spans[0][1]
        if unclosed:
            raise _Cut
    tokens = list(re.finditer(r"\S+", line))
    taken: list[str] = []
    for n, m in enumerate(tokens):
        token = m.group(0)
        bare = token.rstrip(_TRAILING_PUNCT)
        following = [t.group(0) for t in tokens[n + 1:n + 3]]
        unit = taken and bare in UNITS  # "34 cm", "5 m."
        article = (not taken and len(token) == 1 and token.isalpha() and following and _is_word(following[0]))
        if _is_word(token) or unit or article:
            if not taken:
                break
            word = bare.lower()
            if word in ("and", "or") and following and not _is_word(following[0]):
                return _sentence_text(line), sentence_end  # "2 or 3": a list, kept whole
            if word in _RETRACTIONS:
                return None, offset + m.start()
            after_unit = following[0].rstrip(_TRAILING_PUNCT).lower() if following else ""
            if not is_unit_phrase(bare) or (token == bare and following and (
                    following[0][0].isdigit() or (after_unit in QUANTITY_WORDS
                                                  and after_unit not in ("squared", "cubed")))):
                return None, sentence_end  # "2 million", "2 h 30 min", "2 cm by 3 cm", "2 ab"
            break
        taken.append(token)
        if token == ":" and following:
            continue  # "2 : 3": a ratio
        if token[-1] in ".,;:!?" and not re.search(r"\d!$", token):
            if token[-1] in ",;" and following and (not _is_word(following[0]) or (
                    following[0].lower() in ("and", "or") and len(following) > 1 and not _is_word(following[1]))):
                return _sentence_text(line), sentence_end  # "3, 4", "2; 3", "2, or 3": a list, kept whole
            break
    if taken:
        expression = " ".join(taken)
        stripped = expression.rstrip(_TRAILING_PUNCT)
        if expression[len(stripped):].startswith("!") and stripped[-1:].isdigit():
            stripped += "!"  # "Answer: 3!" is the factorial
        expression = re.sub(r"^\\?\$(?=\s?\d)", "", stripped.strip()).strip()  # currency: "$15" -> 15
        done = offset + tokens[len(taken) - 1].end()
        if re.match(r"[ \t]*(?:[.!?][ \t]*)?(?:but|wait|actually|hmm|no)\b", tail[done - offset:], re.IGNORECASE):
            return None, done  # "The answer is 7. Actually no, it's 9."
        return expression or None, done
    sentence = _sentence_text(line)
    if re.fullmatch(r"[A-Za-z]+", sentence) and sentence.lower() not in QUANTITY_WORDS:
        return sentence, sentence_end  # a word answer: "The answer is Evelyn."
    lead = re.match(r"[^\d$\\]*", sentence).group(0)
    if _NEGATION_RE.search(lead):
        return None, sentence_end  # "The answer is not 2.", "clearly not $3$", "at least 2"
    spans, unclosed = math_spans(sentence)
    if unclosed and not spans:
        raise _Cut
    stated = _last_stated_span(sentence, spans)
    number = _last_standalone_number(sentence, stated[0] if stated else 0)
    end, answer = (number[1], number[2]) if number else stated if stated else (0, None)
    rest = sentence[end:].strip()
    if answer is None or (rest and not is_unit_phrase(rest)):
        return None, sentence_end  # the sentence goes on past its number: "we first note 2 divides n"
    return answer, sentence_end


def _sentence_text(line: str) -> str:
    """`line` up to its first full stop (not a decimal point), without trailing punctuation."""
    return re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip().rstrip(_TRAILING_PUNCT).strip()


def _bare_expression(text: str) -> str | None:
    """The response's last paragraph when it is one expression without words (`\\frac{1}{3}`, a matrix)."""
    stripped = re.split(r"\n[ \t]*\n", text.strip())[-1].strip(" \t\n.,;:!?").strip()
    if not stripped or len(stripped) > 1000 or _has_prose(stripped):
        return None
    return read_number_run(stripped) or span_answer(stripped)


def _last_answer_phrase(response: str) -> int | None:
    """Where the text after the last answer phrase starts, nested phrases included (Minerva's
    "Final Answer: The final answer is $42$. I hope it is correct."); a supposition ("If the answer is 7")
    is no phrase."""
    last = None
    for m in _ANSWER_RE.finditer(response):
        if not _SUPPOSITION_RE.search(response, max(0, m.start() - 40), m.start()):
            last = m
    if last is None:
        return None
    at = last.end()
    for _ in range(10):  # each step strictly moves on; a few suffice for any real response
        line_end = response.find("\n", at)
        inner = None
        for inner in _ANSWER_RE.finditer(response, at, line_end if line_end >= 0 else len(response)):  # noqa: B007
            pass
        if inner is None:
            break
        at = inner.end()
    return at


def _is_list_marker(response: str, m: re.Match) -> bool:
    """A bold number that starts its line and ends in "." or ")" ("**1.** First ...") numbers a list item."""
    line_start = response.rfind("\n", 0, m.start()) + 1
    return not response[line_start:m.start()].strip() and m.group(1).rstrip()[-1:] in ".)"


def extract_answer(response: str, *, boxed_only: bool = False) -> str | None:
    """The final answer written in `response` (see the module docstring), or None when there is none.

    `boxed_only`: no fallbacks — a weak model's last number can match the reference by accident.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if boxed_only or _OPEN_BOX_RE.search(response):
        return None  # a box was opened but never closed: the response was cut off before its answer
    response = _CALCULATOR_RE.sub("", response)  # GSM8K's "<<5*3=15>>15": the annotation is not text
    after = 0  # an answer phrase that gives no answer still speaks for its text: later fallbacks start past it
    try:
        hashes = list(_HASH_RE.finditer(response))
        if hashes:
            answer, consumed = _introduced(hashes[-1].group(1))
            if answer:
                return answer
            after = hashes[-1].start(1) + consumed
        at = _last_answer_phrase(response)
        if at is not None:
            answer, consumed = _introduced(response[at:])
            if answer:
                return answer
            after = max(after, at + consumed)
    except _Cut:
        return None
    bold_answer = None
    for bold in reversed(list(_BOLD_RE.finditer(response, after))):  # "so the total is **42**."
        number = read_number_run(bold.group(1).strip().rstrip("."))
        if number is not None and not _is_list_marker(response, bold):
            bold_answer, after = number, bold.end()  # a later span or number still wins
            break
    spans, unclosed = math_spans(response)
    if unclosed:
        return None  # cut off inside a math span
    spans = [span for span in spans if span[0] >= after]
    stated = _last_stated_span(response, spans)
    # The last span or the last standalone number, whichever ends later ("Let $x = 3$. Then the total is 12.")
    if stated is None and not spans and bold_answer is None:
        bare = _bare_expression(response[after:])
        if bare is not None:
            return bare
    number = _last_standalone_number(_ASY_RE.sub(_blank, response), stated[0] if stated else after)
    if number is not None and (number[2] is not None or (stated is None and bold_answer is None)):
        return number[2]  # an unreadable expression or list after a span leaves the span the answer
    return stated[1] if stated else bold_answer


_ASY_RE = re.compile(r"\[asy\].*?(?:\[/asy\]|\Z)", re.DOTALL)  # Asymptote code: "for(i=1;i<=3;++i)" states nothing


def _blank(m: re.Match) -> str:
    return " " * len(m.group(0))


_CALCULATOR_RE = re.compile(r"<<[^<>\n]{0,200}>>")
_BOLD_RE = re.compile(r"\*\*\s*\$?\s*([^*\n$]{1,100}?)\s*\$?\s*\*\*")


def gold_from_solution(solution: str) -> str | None:
    """Reference answer of a worked solution: its last box, else a GSM8K-style "#### N"."""
    boxed = last_boxed(solution)
    if boxed is not None:
        return boxed
    found = _HASH_RE.findall(solution)
    return found[-1].strip().replace(",", "") if found else None
