"""float16 under FSDP needs loss scaling, which the trainer does not do: refused at config load (naming the key)
and by `parallel.shard`, instead of silently computing in another dtype (issue 26, item 4)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omniopd import parallel
from omniopd.config import ConfigError, load_config


def test_float16_with_fsdp_is_refused_at_config_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.dtype=float16 with parallel\.fsdp=true"):
        load_config(["--model.dtype=float16"])
    # bf16 and fp32 load; fp16 without FSDP (one rank, autocast) is left as it was
    for args in (["--model.dtype=bfloat16"], ["--model.dtype=float32"],
                 ["--model.dtype=float16", "--parallel.fsdp=false"]):
        load_config(args)


def test_shard_refuses_float16_before_touching_the_model():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="param_dtype=torch.float16"):
        parallel.shard(model, param_dtype=torch.float16)
    assert type(model) is LlamaForCausalLM  # not wrapped by fully_shard
