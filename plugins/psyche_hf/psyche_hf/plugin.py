"""psyche plugin hooks for psyche-hf (no torch or transformers import here: listing plugins stays
fast and works even where transformers is missing; the model class loads lazily)."""

from __future__ import annotations

from psyche_core import ModelSpec, OptionSpec, hookimpl
from psyche_hf.presets import PRESETS, TESTED_MODEL_TYPES

OPTIONS = (
    OptionSpec(
        "hf-model",
        str,
        None,
        "With --model hf: the transformers checkpoint to train (a local directory or a Hugging "
        "Face repo id), loaded with AutoModelForCausalLM.",
    ),
    OptionSpec(
        "hf-config",
        str,
        None,
        "With --model hf: a transformers config.json to train from seeded random init "
        "(its model_type picks the architecture).",
    ),
)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="hf",
            cls="psyche_hf.model:HfCausalLM",
            model_types=TESTED_MODEL_TYPES,
            presets=PRESETS,
            options=OPTIONS,
            checkpoint_option="hf_model",
            config_option="hf_config",
            description="any transformers causal LM (AutoModelForCausalLM): --hf-model, "
            "--hf-config, or a checkpoint whose model_type no native plugin claims",
            fallback=True,
        )
    )
