"""Configs transformers refuses (or cannot build) are refused at load time, one line naming the
field, so psyche never trains and saves a checkpoint that loads nowhere else (issue 18)."""

from __future__ import annotations

import pytest

from psyche_core.errors import PsycheError
from psyche_deepseek.config import DeepseekV2Config, DeepseekV3Config
from psyche_llama.model import LlamaConfig

LLAMA = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 30}, r"hidden_size \(30\) must be a multiple of num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer >= 1, got 0"),
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1"),
        ({"num_attention_heads": 0}, "num_attention_heads must be an integer >= 1"),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be an integer >= 1"),
        ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads"),
        ({"hidden_size": 32.5}, "hidden_size must be an integer >= 1, got 32.5"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number"),
        ({"rope_theta": float("inf")}, "rope_theta must be a finite number"),
        ({"rope_theta": -1.0}, "rope_theta must be > 0"),
        ({"initializer_range": float("nan")}, "initializer_range must be a finite number"),
    ],
)
def test_llama_config_mistakes_are_one_line(change, message):
    with pytest.raises(PsycheError, match=message) as caught:
        LlamaConfig.from_dict({**LLAMA, **change})
    assert "llama config: " in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_explicit_head_dim_allows_any_hidden_size():
    config = LlamaConfig.from_dict({**LLAMA, "hidden_size": 30, "head_dim": 8})
    assert config.head_dim == 8


@pytest.mark.parametrize("cls", [DeepseekV2Config, DeepseekV3Config])
@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer >= 1"),
        ({"kv_lora_rank": 0}, "kv_lora_rank must be an integer >= 1"),
        ({"routed_scaling_factor": float("nan")}, "routed_scaling_factor must be a finite"),
    ],
)
def test_deepseek_config_mistakes_are_one_line(cls, change, message):
    with pytest.raises(PsycheError, match=message):
        cls.from_dict({"hidden_size": 32, "num_attention_heads": 4, **change})
