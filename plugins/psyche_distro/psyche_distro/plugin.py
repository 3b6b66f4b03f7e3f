"""psyche hook implementations for psyche-distro (no torch import here: listing plugins stays
fast). The optimizer itself is imported only when a run uses ``--optimizer distro``."""

from __future__ import annotations

from psyche_core import OptimizerSpec, OptionSpec, hookimpl
from psyche_distro.presets import PRESET_HELP, PRESETS

MODES = ("psyche", "sync")

OPTIONS = (
    OptionSpec("distro", bool, False, "Train with DisTrO (same as --optimizer distro)."),
    OptionSpec(
        "compression-chunk",
        int,
        64,
        "DisTrO: target DCT chunk size per dimension; each dimension uses its largest divisor "
        "not above this.",
    ),
    OptionSpec(
        "compression-topk",
        int,
        4,
        "DisTrO: DCT coefficients each peer sends per chunk (largest magnitudes).",
    ),
    OptionSpec(
        "compression-decay",
        float,
        0.999,
        "DisTrO: decay of the momentum before each step's gradient is added, in [0, 1].",
    ),
    OptionSpec(
        "distro-quantization",
        bool,
        False,
        "DisTrO: send 1-bit signs instead of coefficient values.",
    ),
    OptionSpec(
        "distro-bf16-select",
        bool,
        False,
        "DisTrO: choose each chunk's top-k from a bfloat16 DCT (about 4x cheaper on CPUs with "
        "bf16 matrix instructions) and compute the kept values in float32; the choice can "
        "differ from the exact one where magnitudes are within bf16 rounding.",
    ),
    OptionSpec(
        "distro-preset",
        tuple(PRESETS),
        None,
        "DisTrO: a named setting of the options above (and weight decay) that fills in those "
        "not given: " + "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items()),
        presets=PRESETS,
    ),
    OptionSpec(
        "distro-mode",
        MODES,
        "psyche",
        "DisTrO schedule: psyche (apply each step's aggregate one step later, with a lookahead, "
        "as Psyche does) or sync (DeMo: exchange and apply within the step).",
    ),
)


@hookimpl
def register_optimizers(register):
    register(
        OptimizerSpec(
            name="distro",
            factory="psyche_distro.optimizer:build_distro",
            options=OPTIONS,
            implied_by="distro",
            description="DisTrO: DCT top-k momentum exchange with a sign-SGD update",
        )
    )
