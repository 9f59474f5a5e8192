"""HF-generate backend and backend selection, on the real SmolLM2 (no vLLM engine started here)."""

from __future__ import annotations

import logging

import pytest
import torch

from omniopd.assets import load_student, student_path
from omniopd.config import GenerationConfig
from omniopd.rollout.student import GeneratorStartError, build_generator
from omniopd.rollout.student.base import cut_at_stop, sampling_logprobs

PROMPTS = [[{"role": "user", "content": "What is 2+3?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]]


@pytest.fixture(scope="module")
def hf():
    return load_student("smollm2-135m", dtype="float32")


@pytest.fixture(scope="module")
def gen(hf):
    model, tokenizer = hf
    return build_generator(GenerationConfig(backend="hf"), student_path(), hf_model=model, tokenizer=tokenizer)


def test_prompt_ids_come_from_the_chat_template(gen, hf):
    _, tokenizer = hf
    ids = gen.prompt_ids(PROMPTS[0])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n") and "What is 2+3?" in text


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.8)])
def test_hf_samples_and_logprobs_match_a_trainer_forward(gen, hf, temperature, top_p):
    model, _ = hf
    result = gen.generate(PROMPTS, n=3, temperature=temperature, top_p=top_p, max_new_tokens=12)
    assert [len(r) for r in result] == [3, 3]
    for prompt, samples in zip(PROMPTS, result):
        for s in samples:
            assert s.prompt_ids == gen.prompt_ids(prompt)
            assert len(s.logprobs) == len(s.token_ids) and s.finish_reason in ("stop", "length")
            assert (s.finish_reason == "length") == (len(s.token_ids) == 12 and s.token_ids[-1] != 2)
            seq = torch.tensor([s.prompt_ids + s.token_ids])
            with torch.no_grad():
                logits = model(seq).logits[0, len(s.prompt_ids) - 1:-1]
            ref = sampling_logprobs(logits, torch.tensor(s.token_ids), temperature, top_p)
            # batched (left-padded) generate vs an unpadded forward, both fp32
            torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-3, rtol=0)
    if temperature == 0:
        assert all(s.token_ids == r[0].token_ids for r in result for s in r)


def test_model_mode_is_restored_and_update_weights_checks_names(gen, hf):
    model, _ = hf
    model.train()
    gen.generate(PROMPTS[:1], n=1, temperature=0.0, top_p=1.0, max_new_tokens=2)
    assert model.training
    model.eval()
    gen.update_weights(model.named_parameters())
    gen.update_weights(model.state_dict().items())
    with pytest.raises(ValueError, match="not parameters"):
        gen.update_weights([("lm_head.bias", torch.zeros(1))])


def test_own_model_takes_the_trainers_weights(hf):
    """Beside a sharded trainer the HF backend holds its own copy: a swap must really copy the weights."""
    trainer_model, tokenizer = hf
    gen = build_generator(GenerationConfig(backend="hf"), student_path(), tokenizer=tokenizer)  # own copy
    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8)
    before = gen.generate(PROMPTS, **greedy)
    perturbed = {k: v + 0.02 * torch.randn_like(v) for k, v in trainer_model.state_dict().items()}
    perturbed["lm_head.weight"] = perturbed["model.embed_tokens.weight"]  # tied
    gen.update_weights(perturbed.items())
    after = gen.generate(PROMPTS, **greedy)
    assert [r[0].token_ids for r in after] != [r[0].token_ids for r in before]
    gen.update_weights(trainer_model.state_dict().items())  # and back
    assert [r[0].token_ids for r in gen.generate(PROMPTS, **greedy)] == [r[0].token_ids for r in before]


def test_cut_at_stop_and_sampling_logprobs_rules():
    assert cut_at_stop("a. b. c", [". c", ". "]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    # top_p=0.7 keeps tokens 0 and 1 (0.64 alone is short of 0.7)
    lp = sampling_logprobs(logits.expand(4, 4), torch.arange(4), 1.0, 0.7)
    expected = torch.log_softmax(torch.tensor([2.0, 1.0]), -1)
    torch.testing.assert_close(lp[:2], expected)
    assert torch.isinf(lp[2:]).all()
    torch.testing.assert_close(sampling_logprobs(logits, torch.tensor([0]), 0.0, 0.5),
                               torch.log_softmax(logits, -1)[:, 0])


def test_invalid_sampling_arguments_are_rejected(gen):
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(PROMPTS, n=1, temperature=1.0, top_p=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="n=0"):
        gen.generate(PROMPTS, n=0, temperature=1.0, top_p=1.0, max_new_tokens=4)


@pytest.mark.vllm
def test_vllm_start_failure_names_the_cause_and_auto_falls_back(tmp_path, hf, caplog):
    pytest.importorskip("vllm")
    model, tokenizer = hf
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(GeneratorStartError, match="(?s)broken-model.*failed to start.*fall back"):
        build_generator(GenerationConfig(backend="vllm"), str(broken))
    with caplog.at_level(logging.WARNING):
        fallback = build_generator(GenerationConfig(backend="auto"), str(broken), hf_model=model,
                                   tokenizer=tokenizer)
    assert fallback.backend == "hf"
    assert "falling back to HF" in caplog.text and "broken-model" in caplog.text
