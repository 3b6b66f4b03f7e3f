"""Built-in registration of the metric reporters (registered like any plugin's)."""

from psyche_core.hookspecs import hookimpl
from psyche_core.specs import OptionSpec, ReporterSpec


@hookimpl
def register_reporters(register):
    register(
        ReporterSpec(
            name="console",
            factory="psyche_core.reporting:console_reporter",
            description="a live progress bar on a terminal, a line a second otherwise",
        )
    )
    register(
        ReporterSpec(
            name="jsonl",
            factory="psyche_core.reporting:jsonl_reporter",
            options=(
                OptionSpec(
                    "metrics", str, None, "Write one JSON object per step to this JSONL file."
                ),
            ),
            description="one JSON object per step (--metrics)",
        )
    )
    register(
        ReporterSpec(
            name="tensorboard",
            factory="psyche_core.reporting:tensorboard_reporter",
            options=(
                OptionSpec(
                    "tensorboard",
                    str,
                    None,
                    "Also log metrics to this TensorBoard directory (needs the tensorboard "
                    "package).",
                ),
            ),
            description="scalars to a TensorBoard directory (--tensorboard)",
        )
    )
    register(
        ReporterSpec(
            name="wandb",
            factory="psyche_core.reporting:wandb_reporter",
            options=(
                OptionSpec(
                    "wandb-project",
                    str,
                    None,
                    "Also log metrics to this Weights & Biases project (needs the wandb "
                    "package; WANDB_MODE=offline keeps the run local).",
                ),
                OptionSpec("wandb-name", str, None, "Weights & Biases run name."),
            ),
            description="scalars to Weights & Biases (--wandb-project)",
        )
    )
