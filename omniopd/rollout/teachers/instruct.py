"""`teacher.completion_mode=instruct`: continuing a partial answer with a chat API that cannot prefill.

The teacher gets the chat as it is, with the partial answer and an instruction appended to the last user turn
(a new user turn when the chat does not end in one): continue exactly where the partial answer stops and write
only what comes next. An empty prefix needs no instruction: the chat goes as it is.

A chat model does not always obey, so its reply is normalised (`normalise`), in this order; nothing else is
changed:
0. An echoed block: a reply that starts with a <partial>...</partial> block and goes on after it loses the
   block (it is the partial answer repeated); what follows it goes straight to rule 3.
1. Wrapping: one code fence around the whole reply (```lang ... ```) is removed, unless the partial answer is
   itself inside an open fence (then the fence is content); so are <partial> tags around the whole reply, and
   one pair of matching quotes ("", '', “”, ‘’) around the whole reply, unless the partial answer ends (before
   trailing whitespace) in `=`, `(` or an opening quote: then they are the answer's own string literal.
   Nothing inside the reply is touched (apostrophes included).
2. A repeated prefix: a reply that starts with the whole partial answer (up to leading whitespace) loses it,
   and otherwise the longest tail of the partial answer that the reply starts with is dropped, both only when
   the repeat is at least `MIN_OVERLAP` characters long (shorter ones are as likely to be a real
   continuation: "1" then "11 + 2"; "the"). Inside echoed <partial> tags any repeat of the whole partial
   answer is dropped (the tags show it is an echo).
3. The joint: when the partial answer ends in whitespace, the reply's leading whitespace goes (the prefix's
   is the joint); otherwise the joint is kept as the model wrote it.
A reply with nothing left after these rules is a failed sample (retried like any failed sample), never an
empty continuation.
A reply that restarts the answer in other words is kept as it is: the similarity scores it low, as it should.

`INSTRUCT_VERSION` names the wording and the rules above: it is part of the teacher cache key, so a changed
instruction never returns replies cached under the old one.
"""

from __future__ import annotations

INSTRUCT_VERSION = 2
MIN_OVERLAP = 16
OPEN, CLOSE = "<partial>", "</partial>"
INSTRUCTION = (
    "Below, between {open} and {close}, is the beginning of an answer to the request above. Continue it exactly "
    "where it stops: write only the text that comes next (mid-word or mid-sentence if that is where it stops), "
    "as the same author would. Do not repeat any of it, do not restart the answer, do not comment, do not wrap "
    "your text in quotes or code fences.\n{open}{prefix}{close}")
_QUOTED_AFTER = ("=", "(", '"', "'", "\u201c", "\u2018")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"))


def instruct_messages(messages: list[dict[str, str]], prefix: str) -> list[dict[str, str]]:
    """The chat to send instead of prefilling `prefix`: a copy of `messages` plus the instruction."""
    turns = [dict(m) for m in messages]
    if not prefix:
        return turns
    ask = INSTRUCTION.format(open=OPEN, close=CLOSE, prefix=prefix)
    if turns and turns[-1]["role"] == "user":
        turns[-1]["content"] = f"{turns[-1]['content']}\n\n{ask}"
    else:
        turns.append({"role": "user", "content": ask})
    return turns


def _unwrap(reply: str, prefix: str) -> str:
    text = reply.strip()
    if text.startswith(OPEN) and text.endswith(CLOSE):
        text = text[len(OPEN):-len(CLOSE)]
    inside_fence = prefix.count("```") % 2 == 1
    if not inside_fence and text.startswith("```") and text.endswith("```") and len(text) >= 6:
        body = text[3:-3]
        first, newline, rest = body.partition("\n")
        # ```lang\n...: the first line is a language tag when it is one word; else it is content.
        text = rest if newline and (not first.strip() or first.strip().isidentifier()) else body
        text = text.strip("\n")
    # Quotes after `x = `, `f(` or an open quote are the answer's own (a string literal), not a wrapping.
    if not prefix.rstrip().endswith(_QUOTED_AFTER):
        for left, right in _QUOTES:
            if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in text[1:-1]:
                text = text[1:-1]
                break
    return reply if text == reply.strip() else text  # nothing unwrapped: the joint's whitespace as written


def _echoed_block(reply: str) -> str | None:
    """What follows a <partial>...</partial> block the reply starts with (the model echoed the partial answer
    before continuing it), or None when it starts with no such block or nothing follows it."""
    text = reply.lstrip()
    if not text.startswith(OPEN) or CLOSE not in text:
        return None
    rest = text[text.index(CLOSE) + len(CLOSE):]
    return rest if rest.strip() else None


def _drop_repeat(text: str, prefix: str, min_len: int = MIN_OVERLAP) -> str:
    if not prefix:
        return text
    head = prefix.strip()
    stripped = text.lstrip()
    if head and len(head) >= min_len and stripped.startswith(head):
        return stripped[len(head):]
    for k in range(min(len(prefix), len(text)), max(min_len, 1) - 1, -1):
        if text.startswith(prefix[-k:]):
            return text[k:]
    return text


def normalise(reply: str, prefix: str) -> str:
    """The continuation of `prefix` in an instruct-mode `reply` (the module docstring lists the rules); "" when
    nothing is left, which the teacher counts as a failed sample."""
    after = _echoed_block(reply)
    if after is not None:
        text = after
    else:
        tagged = reply.strip().startswith(OPEN) and reply.strip().endswith(CLOSE)
        # Inside echoed tags a repeated prefix is certainly an echo, however short.
        text = _drop_repeat(_unwrap(reply, prefix), prefix, min_len=1 if tagged else MIN_OVERLAP)
    return text.lstrip() if prefix[-1:].isspace() else text


def restarts(continuation: str, prefix: str, probe: int = 16) -> bool:
    """Whether a (normalised) continuation starts the answer over: it begins with the partial answer's first
    `probe` characters (whitespace-insensitive). For reports; the teacher does not drop these."""
    start = " ".join(prefix.split())[:probe]
    return bool(start) and " ".join(continuation.split()).startswith(start)
