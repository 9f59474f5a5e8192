"""Defects an independent review of the training step found (issue 11, item 9), each pinned by a test."""

from __future__ import annotations

import pytest

from omniopd.audit import Fork, fork_requests
from omniopd.baselines import teacher_sample
from omniopd.config import Config, ConfigError, load_config
from omniopd.data import Problem
from omniopd.rollout.teachers.cache import cache_key


def _key(request) -> str:
    return cache_key("local", "m", request.messages, request.prefix, request.n, request.max_tokens,
                     request.temperature, request.seed)


def test_teacher_votes_refresh_every_step_and_reproduce_on_resume():
    cfg = Config()
    problems = [Problem("p0", "What is 2 + 2?", "4")]
    forks = [Fork(seq=0, anchor=0, prefix_text="", chunk_text="2 + 2")]
    step0, step1 = (fork_requests(forks, problems, cfg, step, 0)[0] for step in (0, 1))
    assert step0.prefix == step1.prefix == ""
    assert step0.seed != step1.seed and _key(step0) != _key(step1)  # fresh votes, not a cache hit
    again = fork_requests(forks, problems, cfg, 1, 0)[0]
    assert again.seed == step1.seed and _key(again) == _key(step1)  # a resumed step 1 asks the same



@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from omniopd import assets

    return AutoTokenizer.from_pretrained(assets.student_path())


def test_sft_keeps_a_cut_off_teacher_text_cut_off(tokenizer):
    text = "First add the ones: 7 + 6 = 13, write 3 and carry 1. Then the tens: 2 + 8 + 1 = 11."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 8
    cut = teacher_sample([1, 2], text, tokenizer, max_new_tokens=8)
    assert cut.token_ids == ids[:8] and cut.finish_reason == "length"  # no EOS: the teacher did not stop
    done = teacher_sample([1, 2], text, tokenizer, max_new_tokens=len(ids) + 1)
    assert done.token_ids == ids + [tokenizer.eos_token_id] and done.finish_reason == "stop"
    assert len(done.logprobs) == len(done.token_ids) and done.prompt_ids == [1, 2]


def test_unsharded_multi_rank_is_refused_at_config_load(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="parallel.fsdp=false with 2 ranks"):
        load_config(["--parallel.fsdp=false"])
    assert load_config([]).parallel.fsdp  # the default shards
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not load_config(["--parallel.fsdp=false"]).parallel.fsdp  # one rank: nothing to synchronise
