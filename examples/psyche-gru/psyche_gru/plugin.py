"""Hook implementations: what this distribution adds to psyche."""

from psyche_core import ModelSpec, hookimpl

PRESETS = {
    "tiny": {"vocab_size": 512, "hidden_size": 128, "num_hidden_layers": 1},
    "small": {"vocab_size": 32000, "hidden_size": 512, "num_hidden_layers": 2},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="gru",
            cls="psyche_gru.model:GruForCausalLM",
            model_types=("psyche_gru",),
            architectures=("GruForCausalLM",),
            presets=PRESETS,
            default_preset="tiny",
            description="a GRU language model (example plugin)",
        )
    )
