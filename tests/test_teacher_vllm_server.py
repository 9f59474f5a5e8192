"""The OpenAI-compatible teacher against a real vLLM server of the bundled SmolLM2 (tests/vllm_server.py),
with the built-in task's hinted prompts: the requests the trainer sends, at its concurrency."""

from __future__ import annotations

import pytest
import torch
from vllm_server import CHUNK_TOKENS

from omniopd.config import DataConfig, TeacherConfig
from omniopd.data import load_split, teacher_messages
from omniopd.rollout.teachers import TeacherRequest, build_teacher
from omniopd.rollout.teachers.chat import render_prompt

pytestmark = pytest.mark.vllm
KEY_ENV = "OMNIOPD_TEST_VLLM_KEY"


@pytest.fixture(scope="module")
def hinted() -> list[list[dict[str, str]]]:
    data = DataConfig()
    return [teacher_messages(p, data.system_prompt, "solution") for p in load_split("builtin", data, "train")[:6]]


def make_teacher(server, monkeypatch, tmp_path, **overrides):
    monkeypatch.setenv(KEY_ENV, server.api_key)
    cfg = TeacherConfig(kind="openai", model=server.model, base_url=f"{server.url}/v1", api_key_env=KEY_ENV,
                        completion_mode="completions", max_concurrency=8, timeout_s=300, max_retries=0,
                        **overrides)
    return build_teacher(cfg, cache_path=str(tmp_path / "cache.sqlite"), tokenizer_path="smollm2-135m")


def test_hinted_fork_requests_all_served_and_the_cache_ignores_send_seed(vllm_server, hinted, monkeypatch,
                                                                          tmp_path):
    """What the trainer sends: seeded, sampled, hinted prompts long enough to prefill in chunks."""
    teacher = make_teacher(vllm_server, monkeypatch, tmp_path)
    assert len(teacher.tokenizer(render_prompt(teacher.tokenizer, hinted[0], ""))["input_ids"]) > 2 * CHUNK_TOKENS
    requests = [TeacherRequest(m, prefix, n=4, max_tokens=8, temperature=0.7, seed=1000 + i, key=f"fork {i}")
                for i, m in enumerate(hinted) for prefix in ("", "First, ")]
    results = teacher.generate(requests)
    teacher.close()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert all(len(r.texts) == 4 for r in results)
    assert vllm_server.alive(), vllm_server.log_tail()
    # Same requests, seeds now sent: answered from the cache, without a single request to the server.
    again = make_teacher(vllm_server, monkeypatch, tmp_path, send_seed=True)
    repeat = again.generate(requests)
    again.close()
    assert all(r.cached for r in repeat) and [r.texts for r in repeat] == [r.texts for r in results]


def test_greedy_continuation_equals_hf_generate(vllm_server, hinted, monkeypatch, tmp_path):
    teacher = make_teacher(vllm_server, monkeypatch, tmp_path)
    prefix = "Let's add the ones first:"
    result = teacher.generate([TeacherRequest(hinted[0], prefix, n=2, max_tokens=10, temperature=0.0)])[0]
    teacher.close()
    assert result.ok, result.error
    from omniopd.assets import load_student

    model, tok = load_student("smollm2-135m", "float32")
    ids = torch.tensor([tok(render_prompt(tok, hinted[0], prefix), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert result.texts == [tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)] * 2
