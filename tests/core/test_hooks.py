"""One test per hook, through a real plugin module registered with the plugin manager."""

import types
from typing import ClassVar

import click
import pytest
from click.testing import CliRunner

from psyche_core import (
    DataProviderSpec,
    EvaluatorSpec,
    ModelSpec,
    OptimizerSpec,
    OptionSpec,
    ReporterSpec,
    hookimpl,
)
from psyche_core.cli import make_cli
from psyche_core.errors import PsycheError
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


class RecordingReporter:
    """Keeps what the trainer reports, for the reporter hook's test."""

    runs: ClassVar[list[list[tuple[str, object]]]] = []

    def __init__(self, label: str) -> None:
        self.events: list[tuple[str, object]] = [("label", label)]
        RecordingReporter.runs.append(self.events)

    def on_start(self, info):
        self.events.append(("start", info["first_step"]))

    def on_step(self, metrics):
        self.events.append(("step", metrics["step"]))

    def on_end(self, summary):
        self.events.append(("end", summary["last_step"]))


def recording_reporter(options, run):
    return RecordingReporter(options.record_label) if options.record_label else None


def test_hook_register_reporters(tmp_path):
    from psyche_core import run
    from psyche_core.options import all_option_specs, resolve
    from tests.core import toy_plugin

    def register_reporters(register):
        register(
            ReporterSpec(
                name="recorder",
                factory="tests.core.test_hooks:recording_reporter",
                options=(OptionSpec("record-label", str, None, "Record steps under this label."),),
            )
        )

    module = types.ModuleType("hook_test_plugin")
    module.register_reporters = hookimpl(register_reporters)
    plugins = Plugins.load(entry_points=False, extra=[module, toy_plugin])
    assert "recorder" in plugins.reporters.names() and "jsonl" in plugins.reporters.names()
    help_text = CliRunner().invoke(make_cli(plugins), ["train", "--help"]).output
    assert "--record-label" in help_text
    flags = {"model": "toy", "data_provider": "toy", "sequence_length": 8, "total_batch": 2}
    flags.update(total_steps=3, warmup_steps=1, record_label="a")
    RecordingReporter.runs.clear()
    run.train(resolve(all_option_specs(plugins), flags), plugins)
    assert RecordingReporter.runs == [
        [("label", "a"), ("start", 1), ("step", 1), ("step", 2), ("step", 3), ("end", 3)]
    ]
    # off unless its option is given
    run.train(resolve(all_option_specs(plugins), {**flags, "record_label": None}), plugins)
    assert len(RecordingReporter.runs) == 1


def parameter_count_evaluator(options, model):
    """An evaluation that reports the step and the model's parameter count."""
    return lambda model, step: {"count/params": float(model.num_parameters()), "count/step": step}


def test_hook_register_evaluators(tmp_path):
    import json

    from psyche_core import run
    from psyche_core.options import all_option_specs, resolve
    from tests.core import toy_plugin

    def register_evaluators(register):
        register(
            EvaluatorSpec(
                name="counter",
                factory="tests.core.test_hooks:parameter_count_evaluator",
                options=(OptionSpec("count-things", bool, False, "Report counts."),),
                implied_by="count_things",
            )
        )

    module = types.ModuleType("hook_test_plugin")
    module.register_evaluators = hookimpl(register_evaluators)
    plugins = Plugins.load(entry_points=False, extra=[module, toy_plugin])
    assert plugins.evaluators.names() == ["counter"]
    metrics = tmp_path / "m.jsonl"
    flags = {"model": "toy", "data_provider": "toy", "sequence_length": 8, "total_batch": 2}
    flags.update(total_steps=5, warmup_steps=1, metrics=str(metrics), eval_every=2)
    run.train(resolve(all_option_specs(plugins), {**flags, "count_things": True}), plugins)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["count/step"] for r in rows if "count/step" in r] == [2, 4, 5]  # and the last
    assert all(r.get("count/params", 0) > 0 for r in rows if "count/step" in r)
    # off unless its switch is given (and --eval-every then needs held-out data)
    with pytest.raises(PsycheError, match="--eval-every 2 needs held-out data"):
        run.train(resolve(all_option_specs(plugins), flags), plugins)


def test_hook_register_commands():
    def register_commands(cli):
        cli.add_command(click.Command("hello", callback=lambda: click.echo("hi there")))

    result = CliRunner().invoke(make_cli(plugin(register_commands=register_commands)), ["hello"])
    assert result.output == "hi there\n"
