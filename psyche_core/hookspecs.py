"""The psyche plugin hooks.

A plugin is a module listed in the ``psyche`` entry-point group that implements some of these
hooks with :data:`hookimpl`. Each ``register_*`` hook receives a ``register`` callable; call it
once per thing the plugin provides::

    from psyche_core import ModelSpec, hookimpl

    @hookimpl
    def register_models(register):
        register(ModelSpec(name="mymodel", cls="psyche_mymodel.model:MyModelForCausalLM"))

Keep the plugin module light (no torch import at its top): ``psyche list-plugins`` imports every
plugin, and spec objects name their heavy classes with lazy ``"module:attr"`` strings.
Hooks only ever gain arguments, so an implementation written today keeps working.
See docs/plugin-hooks.md for each hook with an example.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "psyche"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_models(register):
    """Register causal LMs: call ``register(ModelSpec(...))`` once per model."""


@hookspec
def register_data_providers(register):
    """Register data providers: call ``register(DataProviderSpec(...))`` once per provider."""


@hookspec
def register_optimizers(register):
    """Register optimizers: call ``register(OptimizerSpec(...))`` once per optimizer."""


@hookspec
def register_reporters(register):
    """Register metric reporters: call ``register(ReporterSpec(...))`` once per reporter."""


@hookspec
def register_evaluators(register):
    """Register evaluations run during training at ``--eval-every``: call
    ``register(EvaluatorSpec(...))`` once per evaluator."""


@hookspec
def register_commands(cli):
    """Add Click commands or groups to the ``psyche`` CLI group ``cli`` (``cli.add_command``)."""
