"""Built-in registration of the embedded ``sample`` data (the default data, so that any model
plugin trains out of the box with nothing else installed)."""

from psyche_core.hookspecs import hookimpl
from psyche_core.specs import DataProviderSpec


@hookimpl
def register_data_providers(register):
    register(
        DataProviderSpec(
            name="sample",
            factory="psyche_core.sample_data:build_sample",
            default_priority=0,
            description="a small synthetic language generated in code (the default data)",
        )
    )
