"""psyche-core: hook specs, interfaces, plugin loading, the trainer and the ``psyche`` CLI.

Plugin authors import what they need from here::

    from psyche_core import hookimpl, ModelSpec, CausalLM
"""

from psyche_core.errors import PsycheError
from psyche_core.hookspecs import hookimpl
from psyche_core.specs import (
    DataProviderSpec,
    EvaluatorSpec,
    ModelSpec,
    OptimizerSpec,
    OptionSpec,
    ReporterSpec,
)

__version__ = "0.1.0"

__all__ = [
    "DataProviderSpec",
    "EvaluatorSpec",
    "ModelSpec",
    "OptimizerSpec",
    "OptionSpec",
    "PsycheError",
    "ReporterSpec",
    "__version__",
    "hookimpl",
]
