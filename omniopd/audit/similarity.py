"""phi(s, r) in [0, 1]: how much a teacher continuation r agrees with the student's chunk s (docs/design.md §1 step 4).

`get_similarity(name, **options)` returns a callable `(student_chunks: list[str], teacher_texts:
list[list[str]]) -> Tensor[F, N]` (float32, CPU) scoring all F chunks of a step against their N teacher
texts at once. Both texts lose leading/trailing whitespace (teachers and APIs differ in how they start a
continuation), then each teacher text is trimmed to its student chunk's length (`trim`):
- `chars` (default): the first len(s) characters, extended to the end of a word the cut would split
  (so "84" is never scored as "8");
- `words`: as many whitespace-separated words as s has (original spacing kept);
- `none`: unchanged.
Empty texts (after stripping, before trimming): two empty texts score 1, exactly one empty scores 0, for
every phi (a blank or EOS-only student chunk agrees only with a teacher that also stops).

- `cosine`: sentence-embedding cosine (default embedder: the bundled all-MiniLM-L6-v2), clamped at 0;
  every text of the step goes through one batched `encode` call.
- `ned` (the paper's default): 1 - Levenshtein(s, r) / max(len(s), len(r)) over characters (rapidfuzz, C++);
  the unit (characters) and the normaliser (the longer text) are ours: the paper names only the distance.
- `rouge1` (the paper's comparison): unigram-overlap F1 = 2·|A ∩ B| / (|A| + |B|) over the multisets of
  lowercased words, no stemming (`unigrams`), after NFC normalisation (a precomposed and a decomposed "é"
  are one word). Words are runs of Unicode letters, numbers and combining marks (categories L, N, M), so every
  script has them and a vowel sign, virama or harakat stays inside its word; in the scripts written without
  spaces (Thai, Lao, Tibetan, Myanmar, Khmer, kana, Han) each letter or number with its following marks is a
  word. Text with no word at all (only symbols) falls back to its non-space characters, so two identical non-empty
  chunks score 1 in any alphabet. On ASCII text this is `rouge-score`'s rouge1 F1 without stemmer (tested).
- `hybrid`: `cosine(s, r) * J(s, r)` with J the multiset Jaccard index |A ∩ B| / |A ∪ B| of the *exact
  tokens* of the two texts (J = 1 when neither has any). Exact tokens are
  * numbers, canonical: thousands commas dropped, trailing decimal zeros dropped ("1,200.50" -> "1200.5");
  * operators and relations, with ASCII/Unicode spellings merged: + ; - − – -> "-" ; * × · ⋅ -> "*" ;
    / ÷ -> "/" ; = ; < ; > ; <= ≤ -> "<=" ; >= ≥ -> ">=" ; != ≠ -> "!=" ; ^ ; %;
  * the final answer, when stated (last `\\boxed{...}`, else "answer is X", else "#### X"), as one token
    "ANS=<X without spaces and trailing period>".
  Cosine alone cannot see a wrong digit: MiniLM rates "7 × 12 = 84, so she has 84 apples" vs the same
  with 88 at 0.97, above the paraphrase "12 × 7 = 84, so she ends up with 84 apples" (0.96). Hybrid
  scores them 0.49 (J = 4/8) and 0.96 (J = 1): a margin of 0.48 (tests require >= 0.3).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import torch

Trim = Literal["chars", "words", "none"]
Similarity = Callable[[Sequence[str], Sequence[Sequence[str]]], torch.Tensor]
NAMES = ("ned", "rouge1", "cosine", "hybrid")


def get_similarity(name: str = "ned", *, trim: Trim = "chars", embedder: Any = "minilm",
                   device: str = "cpu", batch_size: int = 64, workers: int = 1) -> Similarity:
    """The phi named `name` ('ned', 'rouge1', 'cosine', 'hybrid'); see the module docstring for definitions.

    `embedder` (cosine, hybrid): a name/path for `omniopd.assets.load_embedder` (loaded once per process)
    or a ready SentenceTransformer. `workers`: rapidfuzz threads for `ned` (-1 = all cores).
    """
    if name not in NAMES:
        raise ValueError(f"unknown similarity {name!r}: choose one of {', '.join(NAMES)}")
    if trim not in ("chars", "words", "none"):
        raise ValueError(f"trim={trim!r}: must be 'chars', 'words' or 'none'")

    def score(student_chunks: Sequence[str], teacher_texts: Sequence[Sequence[str]]) -> torch.Tensor:
        n = _check(student_chunks, teacher_texts)
        if not student_chunks:
            return torch.zeros(0, n)
        chunks = [s.strip() for s in student_chunks]
        flat_s = [s for s in chunks for _ in range(n)]
        whole_r = [r.strip() for texts in teacher_texts for r in texts]
        flat_r = [trim_to(r, s, trim) for s, r in zip(flat_s, whole_r)]
        if name == "ned":
            phi = _ned(flat_s, flat_r, workers)
        elif name == "rouge1":
            phi = _rouge1(flat_s, flat_r)
        else:
            model = _embedder(embedder, device) if isinstance(embedder, str) else embedder
            phi = _cosine(model, chunks, flat_r, n, batch_size).reshape(-1)
            if name == "hybrid":
                phi = phi * torch.tensor([exact_agreement(s, r) for s, r in zip(flat_s, flat_r)])
        # Emptiness is judged before trimming: trimming to an empty chunk's length would empty every teacher
        # text, and an EOS-only or blank chunk would then "agree" with any continuation.
        phi = _empty_rule(phi, flat_s, whole_r)
        return phi.reshape(len(student_chunks), n).clamp_(0.0, 1.0)

    score.__name__ = f"phi_{name}"
    return score


def _check(student_chunks: Sequence[str], teacher_texts: Sequence[Sequence[str]]) -> int:
    """N (texts per chunk); every chunk must have the same N and every element must be a str."""
    if isinstance(student_chunks, str) or len(student_chunks) != len(teacher_texts):
        raise ValueError(f"need one list of teacher texts per student chunk: got {len(student_chunks)} chunks "
                         f"and {len(teacher_texts)} lists")
    n = len(teacher_texts[0]) if teacher_texts else 0
    for i, (s, texts) in enumerate(zip(student_chunks, teacher_texts)):
        if not isinstance(s, str):
            raise TypeError(f"student chunk {i} is {type(s).__name__}, not str")
        if isinstance(texts, str) or len(texts) != n:
            raise ValueError(f"chunk {i} has {1 if isinstance(texts, str) else len(texts)} teacher texts, "
                             f"chunk 0 has {n}: drop incomplete chunks before scoring")
        for j, r in enumerate(texts):
            if not isinstance(r, str):
                raise TypeError(f"teacher text {j} of chunk {i} is {type(r).__name__}, not str")
    return n


def trim_to(text: str, reference: str, mode: Trim) -> str:
    """`text` cut to the length of `reference` (see the module docstring for the modes)."""
    if mode == "none":
        return text
    if mode == "words":
        k = len(reference.split())
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        return text if len(ends) <= k else text[:ends[k - 1]] if k else ""
    cut = len(reference)
    if cut < len(text) and cut > 0 and not text[cut - 1].isspace():
        cut += len(re.match(r"\S*", text[cut:]).group())  # finish the word the cut is inside
    return text[:cut]


@functools.lru_cache(maxsize=2)
def _embedder(name: str, device: str):
    from omniopd.assets import load_embedder

    return load_embedder(name, device=device)


def _cosine(model, chunks: list[str], flat_r: list[str], n: int, batch_size: int) -> torch.Tensor:
    """[F, N] cosine between chunk f and its N texts, all texts embedded in one encode call."""
    from omniopd_kernels import cosine_similarity

    emb = model.encode(chunks + flat_r, batch_size=batch_size, convert_to_tensor=True,
                       show_progress_bar=False).float()
    a = emb[:len(chunks)].unsqueeze(1)  # [F, 1, E]
    b = emb[len(chunks):].reshape(len(chunks), n, -1)  # [F, N, E]
    return cosine_similarity(a, b).squeeze(1).float().cpu().clamp(min=0.0)


def _ned(flat_s: list[str], flat_r: list[str], workers: int) -> torch.Tensor:
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cpdist

    out = cpdist(flat_s, flat_r, scorer=Levenshtein.normalized_similarity, workers=workers)
    return torch.as_tensor(out, dtype=torch.float32)


# Scripts written without spaces between words (Thai, Lao, Tibetan, Myanmar, Khmer, kana, Han): each letter or
# number, with the combining marks that follow it, is a unigram.
_UNSPACED = ((0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF),
             (0x19E0, 0x19FF), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_ASCII_WORD = re.compile(r"[a-z0-9]+")


def _unspaced(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _UNSPACED)


def _words(text: str) -> list[str]:
    """Runs of letters, numbers and combining marks (Unicode L*, N*, M*), so a vowel sign or a harakat stays
    inside its word; in the unspaced scripts each letter or number starts a new unigram."""
    words: list[str] = []
    current: list[str] = []
    current_unspaced = False
    for char in text:
        kind = unicodedata.category(char)[0]
        if kind not in "LNM":
            if current:
                words.append("".join(current))
            current = []
            continue
        if kind != "M":  # a base character: a new unigram in (or at the border of) an unspaced script
            if current and (current_unspaced or _unspaced(char)):
                words.append("".join(current))
                current = []
            current_unspaced = _unspaced(char)
        elif not current:
            current_unspaced = False  # a mark with no base: a word of its own, spaced
        current.append(char)
    if current:
        words.append("".join(current))
    return words


def unigrams(text: str) -> Counter[str]:
    """ROUGE-1's multiset of lowercased NFC words (see the module docstring); symbols-only text: its characters."""
    text = unicodedata.normalize("NFC", text.lower())
    words = _ASCII_WORD.findall(text) if text.isascii() else _words(text)
    return Counter(words if words else [c for c in text if not c.isspace()])


def rouge1_f1(a: str, b: str) -> float:
    """Unigram-overlap F1 of two texts; 0 when either has no unigram."""
    ua, ub = unigrams(a), unigrams(b)
    total = sum(ua.values()) + sum(ub.values())
    return 2 * sum((ua & ub).values()) / total if total else 0.0


def _rouge1(flat_s: list[str], flat_r: list[str]) -> torch.Tensor:
    return torch.tensor([rouge1_f1(s, r) for s, r in zip(flat_s, flat_r)], dtype=torch.float32)


def _empty_rule(phi: torch.Tensor, flat_s: list[str], flat_r: list[str]) -> torch.Tensor:
    for i, (s, r) in enumerate(zip(flat_s, flat_r)):
        s_empty, r_empty = not s, not r
        if s_empty or r_empty:
            phi[i] = float(s_empty and r_empty)
    return phi


_NUMBER = r"\d+(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?"
_OPERATOR = r"<=|>=|!=|[+\-−–*×·⋅/÷=<>≤≥≠^%]"
_TOKEN = re.compile(f"(?P<num>{_NUMBER})|(?P<op>{_OPERATOR})")
_OP_CANON = {"−": "-", "–": "-", "×": "*", "·": "*", "⋅": "*", "÷": "/", "≤": "<=", "≥": ">=", "≠": "!="}
_ANSWER = [re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}"),
           re.compile(r"answer is[:\s]*\$?([^\s$]+)", re.IGNORECASE),
           re.compile(r"####\s*(\S+)")]


def _canon_number(text: str) -> str:
    try:
        return format(Decimal(text.replace(",", "")).normalize(), "f")
    except InvalidOperation:  # pragma: no cover - the regex only admits digits, commas and one dot
        return text


def exact_tokens(text: str) -> Counter[str]:
    """Multiset of canonical numbers, operators and the final answer (see the module docstring)."""
    tokens: Counter[str] = Counter()
    for m in _TOKEN.finditer(text):
        tokens[_canon_number(m["num"]) if m["num"] else _OP_CANON.get(m["op"], m["op"])] += 1
    for pattern in _ANSWER:
        found = pattern.findall(text)
        if found:
            tokens["ANS=" + re.sub(r"\s+", "", found[-1]).rstrip(".")] += 1
            break
    return tokens


def exact_agreement(a: str, b: str) -> float:
    """Multiset Jaccard index of `exact_tokens(a)` and `exact_tokens(b)`; 1 when both are empty."""
    ta, tb = exact_tokens(a), exact_tokens(b)
    union = sum((ta | tb).values())
    return 1.0 if union == 0 else sum((ta & tb).values()) / union
