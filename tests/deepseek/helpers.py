"""Tiny random DeepSeek models built with transformers, shared with psyche through a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

transformers = __import__("pytest").importorskip("transformers")

from psyche_deepseek.model import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM  # noqa: E402

VOCAB = 96

BASE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 48,
    "intermediate_size": 80,
    "moe_intermediate_size": 24,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "q_lora_rank": 20,
    "kv_lora_rank": 12,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 6,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
}

YARN = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "mscale": 1.0,
    "mscale_all_dim": 0.8,
    "beta_fast": 32,
    "beta_slow": 1,
}

PSYCHE = {"deepseek_v3": DeepseekV3ForCausalLM, "deepseek_v2": DeepseekV2ForCausalLM}


def hf_classes(kind: str) -> tuple[type, type]:
    if kind == "deepseek_v3":
        return transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM
    return transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM


def build_hf(kind: str, seed: int = 0, **overrides: Any):
    """A transformers model with random weights, norms away from one and random correction
    biases (so that every parameter and the noaux_tc choice matter)."""
    config_cls, model_cls = hf_classes(kind)
    config = config_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).float()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.05 * torch.randn(buffer.shape, generator=generator))
    return model


def save_hf(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def hf_and_psyche(
    kind: str, tmp_path: Path, attn: str = "sdpa", **overrides: Any
) -> tuple[Any, DeepseekV3ForCausalLM]:
    """The same random weights in transformers and (through save_pretrained) in psyche."""
    hf = build_hf(kind, **overrides)
    hf.config._attn_implementation = attn
    ours = PSYCHE[kind].from_pretrained(save_hf(hf, tmp_path / "hf"))
    ours.set_attn_implementation(attn)
    return hf, ours


def tokens(batch: int = 2, length: int = 17, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)
