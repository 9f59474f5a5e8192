"""`teacher.completion_mode=instruct`: the instruction and the normalisation rules (instruct.py) by hand-made
cases and properties, and instruct vs prefill continuations of the same forks from the real local vLLM server
of the bundled SmolLM2 (a check of the mechanics with a small model, not of how hosted models obey)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from omniopd.rollout.teachers.instruct import CLOSE, MIN_OVERLAP, OPEN, instruct_messages, normalise, restarts

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 7?"}]


def test_the_partial_answer_goes_in_the_last_user_turn_with_the_instruction():
    sent = instruct_messages(CHAT, "12 + 7 = ")
    assert sent[0] == CHAT[0] and len(sent) == 2 and CHAT[1]["content"] == "What is 12 + 7?"  # input untouched
    assert sent[1]["role"] == "user" and sent[1]["content"].startswith("What is 12 + 7?\n\n")
    assert "Continue it exactly where it stops" in sent[1]["content"]
    assert sent[1]["content"].endswith(f"{OPEN}12 + 7 = {CLOSE}")
    assert instruct_messages(CHAT, "") == CHAT  # nothing to continue: the chat as it is
    ending_in_assistant = CHAT + [{"role": "assistant", "content": "Sure."}]
    assert instruct_messages(ending_in_assistant, "x")[-1]["role"] == "user"


@pytest.mark.parametrize("reply, prefix, expected", [
    ("19.", "12 + 7 = ", "19."),                                        # a plain continuation: unchanged
    (" 19.", "12 + 7 = ", "19."),                                       # the prefix's space is the joint
    (" 19.", "12 + 7 =", " 19."),                                       # the joint's space as written
    ("First, we add 12 + 7 = 19.", "First, we add 12 + 7 = ", "19."),     # the whole prefix repeated
    ("  First, we add 12 + 7 = 19.", "First, we add 12 + 7 = ", "19."),
    ("11 + 2 = 13", "1", "11 + 2 = 13"),                                # a whole prefix < MIN_OVERLAP: kept
    ("12 + 7 = 19.", "12 + 7 = ", "12 + 7 = 19."),
    (f"{OPEN}So 3 + 4{CLOSE} = 7", "So 3 + 4", " = 7"),                 # an echoed block, then the reply
    (f"{OPEN}So 3 + 4 {CLOSE} 7", "So 3 + 4 = ", "7"),
    ('"abc"', "x = ", '"abc"'),                                         # quotes after `=`: a string literal
    ("'a', 'b')", "f(", "'a', 'b')"),
    ("“hi”", "he said “", "“hi”"),
    ("‘it’s done’", "So ", "it’s done"),                           # the apostrophe inside stays
    ("'it's done'", "So ", "'it's done'"),
    ("```\n19.\n```", "12 + 7 = ", "19."),                              # a fence around the reply
    ("```text\n19.\n```", "12 + 7 = ", "19."),
    ('"19."', "The sum is ", "19."),                                      # quotes around the reply
    ("\u201c19.\u201d", "The sum is ", "19."),
    (f"{OPEN}12 + 7 = 19.{CLOSE}", "12 + 7 = ", "19."),                 # the tags echoed
    ("2 + 7 = 9.", "First, we add 2 + 7", "2 + 7 = 9."),                # an overlap < MIN_OVERLAP: kept
    ("we add the ones: 2 + 7 = 9.", "First, we add the ones: 2 + 7", " = 9."),  # a long tail repeated
    ("x = 1\n```", "```python\n", "x = 1\n```"),                        # inside an open fence: content
    ('"a" and "b"', "say ", '"a" and "b"'),                             # not one pair of quotes
])
def test_normalise_rules(reply, prefix, expected):
    assert normalise(reply, prefix) == expected


words = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]) | st.sampled_from(" +=.,"),
                min_size=1, max_size=60)


@given(prefix=words, continuation=words)
def test_a_repeated_prefix_is_dropped_and_a_fence_unwrapped(prefix, continuation):
    continuation = continuation.strip() or "x"
    prefix = "The answer so far: " + prefix.strip() + " "  # at least MIN_OVERLAP characters
    assert normalise(prefix + continuation, prefix) == continuation
    assume(not continuation.startswith(prefix.strip()))  # else rule 2 rightly drops it after unwrapping
    assert normalise(f"```\n{continuation}\n```", prefix) == continuation


@given(prefix=words, continuation=words)
def test_a_continuation_that_shares_no_long_overlap_is_kept(prefix, continuation):
    overlap = any(continuation.startswith(prefix[-k:]) for k in range(MIN_OVERLAP, len(prefix) + 1))
    if prefix.strip() and not continuation.lstrip().startswith(prefix.strip()) and not overlap:
        assert normalise(continuation, prefix) == continuation


@given(prefix=words, reply=words)
def test_a_short_whole_prefix_is_never_dropped(prefix, reply):
    """Rule 2's minimum length holds for the whole-prefix repeat as for a tail: a prefix shorter than MIN_OVERLAP
    is never cut from the start of a plain (unwrapped, untagged) reply."""
    assume(len(prefix.strip()) < MIN_OVERLAP and not prefix[-1:].isspace() and not reply.startswith(("'", '"')))
    assert normalise(reply, prefix) == reply


@pytest.mark.parametrize("reply, prefix", [("", "12 + 7 = "), ("   ", "12 + 7 = "), ('""', "So "),
                                           (f"{OPEN}First, we add the ones{CLOSE}", "First, we add the ones"),
                                           ("First, we add the ones", "First, we add the ones ")])
def test_nothing_left_after_normalising_is_empty(reply, prefix):
    assert normalise(reply, prefix).strip() == ""


def test_restarts():
    assert restarts("First, we add the ones: 2 + 7 = 9", "First,  we add the ones and then")
    assert not restarts(" = 9, then the tens", "First, we add the ones")
    assert not restarts("anything", "")


def test_anthropic_in_instruct_mode_sends_no_prefill_and_keys_the_cache_apart(monkeypatch, tmp_path):
    """The real `anthropic` SDK against a loopback replay of a hand-written Messages reply: the partial answer goes in
    the user turn (no assistant turn), and the instruct reply is cached apart from a prefill reply."""
    from loopback import api_teachers
    from replay import Replay

    from omniopd.rollout.teachers import TeacherRequest

    server = Replay("anthropic")
    server.push("message_prefill", "message_prefill")
    cache = str(tmp_path / "cache.sqlite")
    try:
        with api_teachers(monkeypatch, "OMNIOPD_TEST_ANTHROPIC_KEY", "sk-ant-test-instruct", kind="anthropic",
                          model="claude-haiku-4-5", base_url=server.url, max_retries=0, timeout_s=10) as make:
            ask = [TeacherRequest(CHAT, "12 + 7 = ", n=1, max_tokens=32, temperature=0.7)]
            [result] = make(cache_path=cache, completion_mode="instruct").generate(ask)
            [prefill] = make(cache_path=cache).generate(ask)  # same request, prefill mode: not the cached reply
    finally:
        server.close()
    first, second = (r["body"] for r in server.requests)
    assert first["system"] == "Be brief." and [m["role"] for m in first["messages"]] == ["user"]
    assert first["messages"][0]["content"].endswith(f"{OPEN}12 + 7 = {CLOSE}")
    assert second["messages"][-1] == {"role": "assistant", "content": "12 + 7 ="}
    assert result.texts == ["19, so the answer is \\boxed{19}."]  # the prefix's trailing space is the joint
    assert not prefill.cached and prefill.texts == ["19, so the answer is \\boxed{19}."]


# -- instruct vs prefill on the real vLLM server -----------------------------------------------------------------

@pytest.mark.vllm
def test_instruct_vs_prefill_continuations_on_a_real_server(vllm_server, monkeypatch, tmp_path):
    """The same forks (hinted built-in problems, prefixes cut from their reference solutions) continued by
    prefill ('completions': exact) and by instruct mode. Asserts the mechanics: every request answered in both
    modes, n texts each, none starting with its whole prefix (the normaliser drops it). Reports φ between the
    modes beside φ within prefill, and the fraction of instruct continuations that restart the answer."""
    from omniopd.audit.similarity import get_similarity
    from omniopd.config import DataConfig, TeacherConfig
    from omniopd.data import load_split, teacher_messages
    from omniopd.rollout.teachers import TeacherRequest, build_teacher

    monkeypatch.setenv("OMNIOPD_TEST_VLLM_KEY", vllm_server.api_key)
    data = DataConfig()
    problems = [p for p in load_split("builtin", data, "train") if p.solution][:8]
    requests = []
    for i, p in enumerate(problems):
        cut = p.solution.split(" ")
        for frac in (0.3, 0.6):
            prefix = " ".join(cut[:max(1, int(len(cut) * frac))]) + " "
            requests.append(TeacherRequest(teacher_messages(p, data.system_prompt, "solution"), prefix, n=4,
                                           max_tokens=16, temperature=0.7, seed=100 + i, key=f"fork {i} {frac}"))

    def run(mode: str):
        cfg = TeacherConfig(kind="openai", model=vllm_server.model, base_url=f"{vllm_server.url}/v1",
                            api_key_env="OMNIOPD_TEST_VLLM_KEY", completion_mode=mode, max_concurrency=8,
                            timeout_s=300, max_retries=0)
        with build_teacher(cfg, cache_path=None, tokenizer_path="smollm2-135m") as teacher:
            return teacher.generate(requests)

    prefill, instruct = run("completions"), run("instruct")
    for results in (prefill, instruct):
        assert all(r.ok and len(r.texts) == 4 for r in results), [r.error for r in results if not r.ok]
    assert vllm_server.alive(), vllm_server.log_tail()
    for req, r in zip(requests, instruct, strict=True):
        assert not any(t.lstrip().startswith(req.prefix.strip()) for t in r.texts)

    phi = get_similarity("ned", trim="chars")
    # Each fork's first prefill continuation is the reference ("student chunk") both modes are scored against.
    refs = [r.texts[0] for r in prefill]
    within = phi(refs, [r.texts[1:] for r in prefill]).mean().item()
    across = phi(refs, [r.texts for r in instruct]).mean().item()
    restarted = sum(restarts(t, q.prefix) for q, r in zip(requests, instruct, strict=True) for t in r.texts)
    report = {"forks": len(requests), "n": 4, "phi_ned_prefill_vs_prefill": round(within, 3),
              "phi_ned_instruct_vs_prefill": round(across, 3),
              "instruct_restart_fraction": round(restarted / (4 * len(requests)), 3)}
    print(json.dumps(report))
    if os.environ.get("OMNIOPD_REPORT"):
        with open(os.environ["OMNIOPD_REPORT"], "w") as f:
            json.dump(report, f)
    assert 0.0 <= across <= 1.0 and 0.0 <= within <= 1.0
