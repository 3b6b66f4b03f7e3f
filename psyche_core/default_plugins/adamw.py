"""Built-in registration of the AdamW optimizer (registered like any plugin's)."""

from psyche_core.hookspecs import hookimpl
from psyche_core.specs import OptimizerSpec


@hookimpl
def register_optimizers(register):
    register(
        OptimizerSpec(
            name="adamw",
            factory="psyche_core.adamw:build_adamw",
            default_priority=0,
            description="torch AdamW on the data-parallel mean gradient",
        )
    )
