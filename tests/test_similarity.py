"""phi functions against hand-computed values and the real bundled MiniLM."""

import pytest
import torch

from omniopd.audit import exact_agreement, exact_tokens, get_similarity, trim_to

CORRECT = "7 × 12 = 84, so she has 84 apples"
WRONG = "7 × 12 = 88, so she has 88 apples"
PARAPHRASE = "12 × 7 = 84, so she ends up with 84 apples"


@pytest.fixture(scope="module")
def embedder():
    from omniopd.assets import load_embedder

    return load_embedder("minilm")


def test_ned_hand_values():
    phi = get_similarity("ned", trim="none")(["kitten", "abcd", ""], [["sitting", "kitten"], ["abce", "wxyz"],
                                                                       ["", "x"]])
    expected = torch.tensor([[1 - 3 / 7, 1.0], [0.75, 0.0], [1.0, 0.0]])  # both empty 1, one empty 0
    torch.testing.assert_close(phi, expected)


@pytest.mark.parametrize("trim", ["chars", "words"])
@pytest.mark.parametrize("chunk", ["", "  \n\n ", "\n"])
def test_blank_chunk_agrees_only_with_a_teacher_that_stops(chunk, trim):
    """An EOS-only or whitespace chunk used to score 1 against any text: the teacher text was trimmed to the
    chunk's zero length before the empty rule ran. Emptiness is now judged on the untrimmed text."""
    phi = get_similarity("ned", trim=trim)([chunk], [["The answer is 5.", "  ", "\n6 + 7 = 13"]])
    torch.testing.assert_close(phi, torch.tensor([[0.0, 1.0, 0.0]]))


def test_trim_modes():
    assert trim_to("89 and more", "89", "chars") == "89"
    assert trim_to("1234 apples", "12", "chars") == "1234"  # never cut inside a word / number
    assert trim_to("ab  cd ef", "xy z", "words") == "ab  cd"
    assert trim_to("ab cd", "x y z", "words") == "ab cd"
    assert trim_to("anything", "", "chars") == ""
    assert trim_to("ab cd ef", "x", "none") == "ab cd ef"
    # trimming happens before scoring: the tail of a longer teacher text does not count
    assert get_similarity("ned")(["abc"], [["abc def"]]).item() == 1.0
    assert get_similarity("ned", trim="none")(["abc"], [["abc def"]]).item() == pytest.approx(3 / 7)


def test_exact_tokens_canonical():
    assert exact_tokens("1,200.50 − 3×4 ≤ x") == exact_tokens("1200.5 - 3*4 <= x")
    assert exact_tokens("so \\boxed{\\frac{1}{2}}.")["ANS=\\frac{1}{2}"] == 1
    assert exact_tokens("The answer is 42.")["ANS=42"] == 1
    assert exact_agreement("no numbers", "none here") == 1.0
    assert exact_agreement(CORRECT, WRONG) == pytest.approx(4 / 8)  # 7 × 12 = shared; 84 84 vs 88 88


def test_cosine_paraphrase_beats_unrelated(embedder):
    calls = []
    encode = embedder.encode
    embedder.encode = lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw)  # count, real model
    try:
        phi = get_similarity("cosine", embedder=embedder, trim="none")(
            ["The cat sat on the mat.", CORRECT],
            [["A cat was sitting on the mat.", "Quarterly revenue rose by four percent."],
             [PARAPHRASE, "The train leaves the station at noon."]])
    finally:
        embedder.encode = encode
    assert calls == [6]  # every text of the step in one batched call
    assert phi.shape == (2, 2) and phi.dtype == torch.float32
    assert ((phi >= 0) & (phi <= 1)).all()
    assert phi[0, 0] > phi[0, 1] + 0.3 and phi[1, 0] > phi[1, 1] + 0.3


def test_hybrid_margin_on_wrong_number(embedder):
    cosine = get_similarity("cosine", embedder=embedder, trim="none")([CORRECT], [[PARAPHRASE, WRONG]])[0]
    hybrid = get_similarity("hybrid", embedder=embedder, trim="none")([CORRECT], [[PARAPHRASE, WRONG]])[0]
    # MiniLM alone cannot tell the wrong number apart (it even prefers it)
    assert cosine[1] > 0.9 and abs(cosine[0] - cosine[1]) < 0.05
    # hybrid = cosine × Jaccard of exact tokens: paraphrase keeps its cosine, the wrong one is halved
    torch.testing.assert_close(hybrid, cosine * torch.tensor([1.0, 0.5]))
    assert hybrid[0] - hybrid[1] >= 0.3
    # default char trimming cuts the longer paraphrase after "with" (losing "84 apples"): smaller lead
    trimmed = get_similarity("hybrid", embedder=embedder)([CORRECT], [[PARAPHRASE, WRONG]])[0]
    assert trimmed[0] - trimmed[1] >= 0.1


def test_bad_input_names_the_culprit():
    with pytest.raises(ValueError, match="unknown similarity 'jaccard'"):
        get_similarity("jaccard")
    with pytest.raises(ValueError, match="chunk 1 has 1 teacher texts"):
        get_similarity("ned")(["a", "b"], [["a", "a"], ["b"]])
    with pytest.raises(TypeError, match="teacher text 0 of chunk 0"):
        get_similarity("ned")(["a"], [[None]])
    assert get_similarity("ned")([], []).shape == (0, 0)


def test_surrounding_whitespace_is_ignored():
    phi = get_similarity("ned")([" 84 apples"], [["84 apples\n", "  84 apples and more", " \n"]])
    torch.testing.assert_close(phi, torch.tensor([[1.0, 1.0, 0.0]]))
