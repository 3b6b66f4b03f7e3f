"""psyche plugin hooks for DeepSeek-V2 / V3 (no torch import here: the model loads lazily)."""

from __future__ import annotations

from psyche_core import ModelSpec, OptionSpec, hookimpl
from psyche_deepseek.presets import DEFAULT_PRESET, V2_PRESETS, V3_PRESETS

BIAS_UPDATE_RATE = OptionSpec(
    "moe-bias-update-rate",
    float,
    0.0,
    "Auxiliary-loss-free load balancing (DeepSeek-V3): after each step, move every expert's "
    "routing bias by this much towards balance (bias += rate * sign(mean load - load)). "
    "Needs topk_method noaux_tc; 0 (default) leaves the bias alone. DeepSeek-V3 used 0.001.",
)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="deepseek_v3",
            cls="psyche_deepseek.model:DeepseekV3ForCausalLM",
            model_types=("deepseek_v3",),
            architectures=("DeepseekV3ForCausalLM",),
            presets=V3_PRESETS,
            default_preset=DEFAULT_PRESET,
            default_priority=50,
            options=(BIAS_UPDATE_RATE,),
            description="DeepSeek-V3 (MLA, sigmoid-routed MoE with bias balancing); "
            "transformers checkpoints",
        )
    )
    register(
        ModelSpec(
            name="deepseek_v2",
            cls="psyche_deepseek.model:DeepseekV2ForCausalLM",
            model_types=("deepseek_v2",),
            architectures=("DeepseekV2ForCausalLM",),
            presets=V2_PRESETS,
            default_preset=DEFAULT_PRESET,
            options=(BIAS_UPDATE_RATE,),
            description="DeepSeek-V2 / V2-Lite (MLA, softmax-routed MoE); transformers checkpoints",
        )
    )
