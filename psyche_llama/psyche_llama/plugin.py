"""psyche plugin hooks for Llama (no torch import here: the model class loads lazily)."""

from __future__ import annotations

from psyche_core import ModelSpec, hookimpl
from psyche_llama.presets import DEFAULT_PRESET, PRESETS


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="llama",
            cls="psyche_llama.model:LlamaForCausalLM",
            model_types=("llama",),
            architectures=("LlamaForCausalLM",),
            presets=PRESETS,
            default_preset=DEFAULT_PRESET,
            default_priority=100,  # `psyche train` with no --model: the quick start's model
            description="Llama 2 / Llama 3 (GQA, RoPE scaling, SwiGLU); transformers checkpoints",
        )
    )
