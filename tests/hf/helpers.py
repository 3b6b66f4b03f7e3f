"""Shared helpers for the psyche-hf tests: tiny configs, a plugin set, run options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import psyche_data.plugin
import psyche_distro.plugin
import psyche_hf.plugin
import psyche_llama.plugin
from psyche_core.options import Options, all_option_specs, resolve
from psyche_core.plugins import Plugins

VOCAB = 128
_TOKENS = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
_DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}

#: tiny random configs, one per architecture the tests exercise (vocab 128, two layers)
TINY: dict[str, dict[str, Any]] = {
    "qwen2": {"model_type": "qwen2", **_TOKENS, **_DECODER, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **_TOKENS, **_DECODER, "head_dim": 8},
    # a window shorter than the test documents, so packing has to compose with it
    "mistral": {"model_type": "mistral", **_TOKENS, **_DECODER, "sliding_window": 4},
    "mixtral": {
        "model_type": "mixtral",
        **_TOKENS,
        **_DECODER,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "output_router_logits": True,
    },
    "gpt2": {
        "model_type": "gpt2",
        **_TOKENS,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        **_TOKENS,
        **{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"},
    },
    "gptj": {
        "model_type": "gptj",
        **_TOKENS,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "rotary_dim": 4,
        "n_positions": 64,
    },
    "phi": {
        "model_type": "phi",
        **_TOKENS,
        **{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"},
    },
    "phi3": {"model_type": "phi3", **_TOKENS, **_DECODER},
    "gemma": {"model_type": "gemma", **_TOKENS, **_DECODER, "head_dim": 8},
    "gemma2": {"model_type": "gemma2", **_TOKENS, **_DECODER, "head_dim": 8, "sliding_window": 4},
    "olmo2": {"model_type": "olmo2", **_TOKENS, **_DECODER},
    "starcoder2": {"model_type": "starcoder2", **_TOKENS, **_DECODER, "sliding_window": None},
    "falcon": {
        "model_type": "falcon",
        **_TOKENS,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "max_position_embeddings": 64,
    },
    "opt": {
        "model_type": "opt",
        **_TOKENS,
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "word_embed_proj_dim": 32,
    },
    "bloom": {"model_type": "bloom", **_TOKENS, "hidden_size": 32, "n_layer": 2, "n_head": 4},
    "llama": {"model_type": "llama", **_TOKENS, **_DECODER},
}

#: a native psyche-llama config (vocab 512, so it trains on the sample data)
LLAMA_512 = {k: v for k, v in TINY["llama"].items() if k != "model_type"} | {
    "vocab_size": 512,
    "max_position_embeddings": 128,
}


def tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def load_plugins() -> Plugins:
    """psyche-hf with the data, DisTrO and Llama plugins; other installed ones stay out."""
    return Plugins.load(
        entry_points=False,
        extra=[psyche_hf.plugin, psyche_data.plugin, psyche_distro.plugin, psyche_llama.plugin],
    )


def options(plugins: Plugins, out: Path, **overrides: Any) -> Options:
    """A short run on the embedded sample data, metrics to ``out/metrics.jsonl``."""
    values = {
        "model": "hf:qwen2-tiny",
        "sequence_length": 32,
        "total_batch": 4,
        "total_steps": 5,
        "warmup_steps": 1,
        "learning_rate": 3e-3,
        "seed": 0,
        "device": "cpu",
        "metrics": str(out / "metrics.jsonl"),
        **overrides,
    }
    return resolve(all_option_specs(plugins), values)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
