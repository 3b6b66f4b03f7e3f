"""One test per hook, through a real plugin module registered with the plugin manager."""

import types

import click
from click.testing import CliRunner

from psyche_core import DataProviderSpec, ModelSpec, OptimizerSpec, OptionSpec, hookimpl
from psyche_core.cli import make_cli
from psyche_core.plugins import Plugins


def plugin(**hooks):
    module = types.ModuleType("hook_test_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return Plugins.load(entry_points=False, extra=[module])


def test_hook_register_models():
    def register_models(register):
        register(ModelSpec(name="m", cls="a:B", model_types=("mt",), presets={"p": {"x": 1}}))

    plugins = plugin(register_models=register_models)
    spec = plugins.models.get("m")
    assert spec.model_types == ("mt",) and dict(spec.presets["p"]) == {"x": 1}
    assert spec.preset_for_default == "p"


def test_hook_register_data_providers():
    def register_data_providers(register):
        register(DataProviderSpec(name="d", factory="a:b", options=(OptionSpec("d-x", int, 3),)))

    plugins = plugin(register_data_providers=register_data_providers)
    assert plugins.data_providers.get("d").options[0].key == "d_x"
    help_text = CliRunner().invoke(make_cli(plugins), ["train", "--help"]).output
    assert "--d-x" in help_text  # plugin options become train flags


def test_hook_register_optimizers():
    def register_optimizers(register):
        register(OptimizerSpec(name="o", factory="a:b"))

    assert plugin(register_optimizers=register_optimizers).optimizers.names() == ["adamw", "o"]


def test_hook_register_commands():
    def register_commands(cli):
        cli.add_command(click.Command("hello", callback=lambda: click.echo("hi there")))

    result = CliRunner().invoke(make_cli(plugin(register_commands=register_commands)), ["hello"])
    assert result.output == "hi there\n"
