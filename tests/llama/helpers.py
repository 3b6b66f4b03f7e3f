"""Shared helpers for the Llama tests: tiny configs and transformers twins with equal weights."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from psyche_llama.model import LlamaForCausalLM

transformers = pytest.importorskip("transformers")

VOCAB = 96


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A two-layer GQA Llama small enough for a parity check in milliseconds."""
    config = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def hf_model(config: dict[str, Any], attn_implementation: str = "sdpa", seed: int = 0):
    """A transformers LlamaForCausalLM with every parameter random (biases and norms too)."""
    # transformers edits rope dicts in place; keep the caller's config intact
    hf_config = transformers.LlamaConfig(
        **copy.deepcopy(config), attn_implementation=attn_implementation
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_config).float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))
    return model


def twins(config: dict[str, Any], attn_implementation: str = "sdpa", seed: int = 0):
    """(transformers model, psyche model) holding the same weights."""
    hf = hf_model(config, attn_implementation, seed)
    ours = LlamaForCausalLM.from_config(config, seed=seed + 1)
    ours.load_hf_state_dict(hf.state_dict())
    ours.set_attn_implementation(attn_implementation)
    return hf, ours


def tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
