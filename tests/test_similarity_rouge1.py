"""ROUGE-1 phi (`audit.similarity=rouge1`): unigram F1 without stemming, any script, the [0, 1] contract.

The reference is Google's `rouge-score` package (a dev extra, used only here) on ASCII text, where its
tokenizer and ours agree by construction; other scripts are checked against hand-counted unigrams.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd.audit import get_similarity
from omniopd.audit.similarity import rouge1_f1, unigrams

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)

PAIRS = [
    ("The cat sat on the mat.", "the cat is on the mat"),
    ("7 x 12 = 84, so she has 84 apples", "12 x 7 = 84, so she ends up with 84 apples"),
    ("Running runners ran", "run runner running"),  # no stemming: only 'running' is shared
    ("Don't stop: 1,200.50 dollars", "do not stop at 1200.5 dollars"),
    ("abc", "xyz"),
    ("a a a b", "a b b"),  # multiset overlap: min counts
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_matches_rouge_score_on_ascii(a, b):
    expected = SCORER.score(a, b)["rouge1"].fmeasure
    assert rouge1_f1(a, b) == pytest.approx(expected, abs=1e-12)
    phi = get_similarity("rouge1", trim="none")([a], [[b]])
    assert phi.item() == pytest.approx(expected, abs=1e-6)


_ascii = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_ascii, _ascii)
def test_matches_rouge_score_on_random_ascii(a, b):
    expected = SCORER.score(a, b)["rouge1"].fmeasure
    if not unigrams(a) or not unigrams(b) or not any(c.isalnum() for c in a + b):
        return  # no word on a side: rouge-score says 0; ours falls back to symbols (tested below)
    assert rouge1_f1(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text", ["答案是八十四", "Ответ: восемьдесят четыре", "الجواب أربعة وثمانون",
                                  "उत्तर चौरासी है", "คำตอบคือแปดสิบสี่", "答えは八十四です", "+ = ?", "∑∫≤"])
def test_identical_chunks_score_one_in_any_script(text):
    assert get_similarity("rouge1", trim="none")([text], [[text]]).item() == 1.0


def test_scripts_without_spaces_count_characters():
    # Han: one unigram per character. 我爱你 vs 你爱她: shared {爱, 你} -> 2*2/(3+3)
    assert rouge1_f1("我爱你", "你爱她") == pytest.approx(4 / 6)
    # Cyrillic words, case folded: {ответ, 84} shared of 3 and 2 words
    assert rouge1_f1("Ответ 84 рубля", "ответ 84") == pytest.approx(2 * 2 / 5)


def test_batched_shape_range_and_empty_rule():
    chunks = ["the answer is 84", "", "   "]
    texts = [["the answer is 84", "it is 88", ""], ["", "x", " "], ["", "y", "z"]]
    phi = get_similarity("rouge1", trim="none")(chunks, texts)
    assert phi.shape == (3, 3) and phi.dtype == torch.float32
    assert ((phi >= 0) & (phi <= 1)).all()
    expected = torch.tensor([[1.0, 2 * 1 / (4 + 3), 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(phi, expected)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_any_text_scores_in_unit_interval(chunk, texts):
    phi = get_similarity("rouge1")([chunk], [texts])
    assert phi.shape == (1, len(texts)) and ((phi >= 0) & (phi <= 1)).all()
    if chunk.strip():
        assert get_similarity("rouge1")([chunk], [[chunk]]).item() == 1.0


def test_combining_marks_stay_inside_their_word():
    # Devanagari: मैं (I) and में (in) share the base म but differ in vowel sign and nasal mark: only घर is shared
    assert rouge1_f1("मैं घर", "में घर") == pytest.approx(2 * 1 / (2 + 2))
    assert unigrams("नमस्ते") == {"नमस्ते": 1}  # virama and vowel sign inside the one word
    # Arabic with harakat: كَتَبَ (he wrote) and كُتِبَ (it was written) are different words
    assert rouge1_f1("كَتَبَ الولد", "كُتِبَ الولد") == pytest.approx(2 * 1 / (2 + 2))
    assert rouge1_f1("كَتَبَ", "كُتِبَ") == 0.0


def test_nfc_makes_precomposed_and_decomposed_letters_one_word():
    precomposed, decomposed = "caf\u00e9 noir", "cafe\u0301 noir"
    assert precomposed != decomposed and rouge1_f1(precomposed, decomposed) == 1.0
    assert unigrams(decomposed) == {"caf\u00e9": 1, "noir": 1}
    assert rouge1_f1("café", "cafe") == 0.0  # the accent is part of the word


def test_lao_khmer_myanmar_tibetan_count_letters_with_their_marks():
    # Khmer: កា and កិ are the same consonant with different vowel signs: no unigram shared
    assert rouge1_f1("កា", "កិ") == 0.0
    assert unigrams("ខ្ញុំ") == {"ខ្": 1, "ញុំ": 1}  # ខ + coeng; ញ + vowel sign + nikahit
    # Myanmar: ကို and ကား differ in their marks; ကို vs ကို ကား shares one of 1 and 2
    assert rouge1_f1("ကို", "ကား") == 0.0
    assert rouge1_f1("ကို", "ကိုကား") == pytest.approx(2 * 1 / (1 + 2))
    # Lao, unspaced: ສະບາຍດີ = ສ ະ ບ າ ຍ ດີ (six unigrams), ສະບາຍ its first five
    assert sum(unigrams("ສະບາຍດີ").values()) == 6
    assert rouge1_f1("ສະບາຍດີ", "ສະບາຍ") == pytest.approx(2 * 5 / (6 + 5))
    # Tibetan: བཀྲ་ཤིས = བ ཀྲ ཤི ས (the tsheg separates); ཤིས vs ཤས share only ས
    assert unigrams("བཀྲ་ཤིས") == {"བ": 1, "ཀྲ": 1, "ཤི": 1, "ས": 1}
    assert rouge1_f1("ཤིས", "ཤས") == pytest.approx(2 * 1 / (2 + 2))
