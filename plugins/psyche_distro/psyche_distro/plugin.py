"""psyche hook implementations for psyche-distro (no torch import here: listing plugins stays
fast). The optimizer itself is imported only when a run uses ``--optimizer distro``."""

from __future__ import annotations

from psyche_core import OptimizerSpec, OptionSpec, hookimpl

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
