"""Named configs for ``--model hf:PRESET`` (plain dicts of transformers config.json fields).

Each random-init preset names its architecture with ``model_type``, exactly as a config.json does,
and is sized to train in seconds on the embedded ``sample`` data (vocabulary 512, BOS 1, EOS 2).
``--model hf`` without a preset trains the model that ``--hf-model`` (a checkpoint) or
``--hf-config`` (a config.json) names.

Kept apart from ``plugin.py`` (hooks only) and ``model.py`` (imports torch), so ``psyche
list-plugins`` reads them without importing torch or transformers.
"""

from __future__ import annotations

from typing import Any

_SAMPLE_TOKENS = {"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}

PRESETS: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B's shape in miniature: GQA, q/k/v biases, tied embeddings.
    "qwen2-tiny": {
        "model_type": "qwen2",
        **_SAMPLE_TOKENS,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    # Mistral-7B-v0.1's shape in miniature: GQA, untied, a 4096-token sliding window.
    "mistral-tiny": {
        "model_type": "mistral",
        **_SAMPLE_TOKENS,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
    },
    # GPT-2 in miniature: learned absolute positions, LayerNorm, GELU, tied embeddings. Dropout
    # is off (GPT-2's default is 0.1) so runs repeat exactly and peers stay in step.
    "gpt2-tiny": {
        "model_type": "gpt2",
        **_SAMPLE_TOKENS,
        "n_embd": 128,
        "n_layer": 4,
        "n_head": 4,
        "n_positions": 1024,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
    },
}

#: model_types the tests build, train and check (tests/hf/test_hf_architectures.py). With a
#: psyche-core that knows fallback model specs the hf plugin loads any model_type no native plugin
#: claims; with an older core only these resolve to it from a checkpoint or a config.json.
TESTED_MODEL_TYPES: tuple[str, ...] = (
    "qwen2",
    "qwen3",
    "mistral",
    "mixtral",
    "gpt2",
    "gpt_neox",
    "gptj",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "olmo2",
    "starcoder2",
    "falcon",
    "opt",
    "bloom",
)
