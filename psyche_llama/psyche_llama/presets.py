"""Named Llama configs that train from random init (plain dicts of HF config.json fields).

Kept apart from ``plugin.py`` (hooks only) and ``model.py`` (imports torch), so the numbers live
in one place that ``psyche list-plugins`` can read without importing torch.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Tests and the embedded default run: seconds per step on a laptop CPU.
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    },
    # A random-init Llama 2 of ~19.79M parameters (Llama 2 tokenizer size), in the spirit of
    # emozilla/llama2-20m-init: head_dim 32, untied embeddings.
    "20m": {
        "vocab_size": 32000,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    },
}

DEFAULT_PRESET = "tiny"
