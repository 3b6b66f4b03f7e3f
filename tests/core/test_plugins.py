import sys

import click
import pytest

from psyche_core.errors import PsycheError, UnknownNameError
from psyche_core.plugins import Plugins
from tests.core.distributions import install_fake_distribution

GOOD = """
from psyche_core import ModelSpec, OptimizerSpec, hookimpl

@hookimpl
def register_models(register):
    register(ModelSpec(name="{model}", cls="x:Y", model_types=("{model}",), presets={{"p": {{}}}}))

@hookimpl
def register_optimizers(register):
    register(OptimizerSpec(name="sgd-{model}", factory="x:make"))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = dict(sys.modules)
    yield tmp_path / "site"
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]


def load(monkeypatch, *entry_points):
    monkeypatch.setenv("PSYCHE_LOAD_PLUGINS", ",".join(entry_points))
    return Plugins.load()


def test_builtins_register_adamw_through_the_hooks():
    plugins = Plugins.load(entry_points=False)
    assert plugins.optimizers.names() == ["adamw"]
    info = plugins.infos[0]
    assert info.builtin and info.distribution == "psyche-core" and info.optimizers == ["adamw"]


def test_entry_point_plugin_is_loaded_with_its_distribution(site, monkeypatch):
    install_fake_distribution(
        site, "psyche-good", "1.2.3", "good", "good_plugin", GOOD.format(model="goodlm")
    )
    plugins = load(monkeypatch, "good")
    info = next(i for i in plugins.infos if i.name == "good")
    assert (info.distribution, info.version, info.error) == ("psyche-good", "1.2.3", None)
    assert info.models == ["goodlm"] and info.optimizers == ["sgd-goodlm"]
    assert plugins.models.get("goodlm").presets["p"] == {}


def test_plugin_that_raises_on_import_is_recorded_and_others_still_load(site, monkeypatch):
    install_fake_distribution(
        site,
        "psyche-broken",
        "0.1",
        "broken",
        "broken_plugin",
        "raise RuntimeError('missing CUDA toolkit')\n",
    )
    install_fake_distribution(
        site, "psyche-good", "1.0", "good", "good_plugin", GOOD.format(model="goodlm")
    )
    plugins = load(monkeypatch, "broken", "good")
    broken = next(i for i in plugins.infos if i.name == "broken")
    assert broken.error == "import failed: RuntimeError: missing CUDA toolkit"
    assert "Traceback" in broken.traceback
    assert "goodlm" in plugins.models


def test_plugin_whose_hook_raises_registers_nothing(site, monkeypatch):
    source = """
from psyche_core import ModelSpec, hookimpl

@hookimpl
def register_models(register):
    register(ModelSpec(name="half", cls="x:Y"))
    raise KeyError("oops")
"""
    install_fake_distribution(site, "psyche-half", "1.0", "half", "half_plugin", source)
    plugins = load(monkeypatch, "half")
    info = next(i for i in plugins.infos if i.name == "half")
    assert info.error.startswith("register_models raised: KeyError")
    assert "half" not in plugins.models


def test_registering_the_wrong_type_is_a_plugin_error(site, monkeypatch):
    source = """
from psyche_core import hookimpl

@hookimpl
def register_models(register):
    register("llama")
"""
    install_fake_distribution(site, "psyche-bad", "1.0", "bad", "bad_plugin", source)
    info = next(i for i in load(monkeypatch, "bad").infos if i.name == "bad")
    assert "register() expects a ModelSpec, got str" in info.error


def test_two_plugins_claiming_one_name_is_an_error_naming_both_distributions(site, monkeypatch):
    install_fake_distribution(
        site, "psyche-first", "1.0", "first", "first_plugin", GOOD.format(model="samelm")
    )
    install_fake_distribution(
        site, "psyche-second", "2.0", "second", "second_plugin", GOOD.format(model="samelm")
    )
    plugins = load(monkeypatch, "first", "second")
    with pytest.raises(PsycheError) as excinfo:
        plugins.models.get("samelm")
    message = str(excinfo.value)
    assert "model 'samelm' is registered twice" in message
    assert "psyche-first 1.0" in message and "psyche-second 2.0" in message
    assert len(plugins.conflicts()) == 2  # the model and the optimizer


def test_unknown_name_lists_known_and_close_matches(plugins):
    with pytest.raises(UnknownNameError) as excinfo:
        plugins.models.get("tyo")
    assert str(excinfo.value).startswith(
        "unknown model 'tyo'; did you mean 'toy'? Known models: toy."
    )


def test_commands_are_attributed_and_a_clash_is_refused(site, monkeypatch):
    source = """
import click
from psyche_core import hookimpl

@hookimpl
def register_commands(cli):
    group = click.Group("{name}")
    group.add_command(click.Command("hello", callback=lambda: click.echo("hi")))
    cli.add_command(group)
"""
    install_fake_distribution(
        site, "psyche-one", "1", "one", "one_plugin", source.format(name="tools")
    )
    install_fake_distribution(
        site, "psyche-two", "1", "two", "two_plugin", source.format(name="tools")
    )
    plugins = load(monkeypatch, "one", "two")
    cli = click.Group("psyche")
    plugins.add_commands(cli)
    one = next(i for i in plugins.infos if i.name == "one")
    two = next(i for i in plugins.infos if i.name == "two")
    assert one.commands == ["tools hello"] and one.error is None
    assert "command 'tools' already exists" in two.error
    assert cli.commands["tools"].commands["hello"] is not None


def test_load_plugins_env_selects_entry_points(site, monkeypatch):
    install_fake_distribution(
        site, "psyche-good", "1.0", "good", "good_plugin", GOOD.format(model="goodlm")
    )
    assert "goodlm" not in load(monkeypatch).models  # empty selection: built-ins only
    assert "goodlm" in load(monkeypatch, "good").models
