"""``psyche train``: options from defaults, ``--config run.toml`` and flags; then ``run.train``."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from psyche_core.errors import PsycheError
from psyche_core.options import collect_option_specs, load_toml, plugin_option_specs
from psyche_core.plugins import Plugins
from psyche_core.signals import stop_on_signals
from psyche_core.specs import OptionSpec


def click_option(spec: OptionSpec, owner: str | None = None) -> click.Option:
    help_text = spec.help + (f" [{owner}]" if owner else "")
    if spec.type is bool:
        return click.Option(
            [f"--{spec.name}/--no-{spec.name}", spec.key],
            default=bool(spec.default),
            help=help_text,
        )
    kind: Any = click.Choice(spec.type) if isinstance(spec.type, tuple) else spec.type
    optional_value: dict[str, Any] = {}
    if spec.flag_value is not None:  # the value may be left out: ``--compile`` = ``--compile on``
        optional_value = {"is_flag": False, "flag_value": spec.flag_value}
    return click.Option(
        [f"--{spec.name}", spec.key],
        type=kind,
        default=spec.default,
        show_default=spec.default is not None,
        help=help_text,
        **optional_value,
    )


TRAIN_HELP = """Train a causal LM.

With no arguments: the installed plugins' default model (the tiny Llama with the first-party
plugins) on the embedded sample data, in about two minutes on a laptop CPU. Every option can also
come from a TOML file (--config run.toml, keys named like the flags); flags given on the command
line win over the file.

\b
Parallel layout: P peers x D replicas x T tensor-parallel ranks (world = P x D x T).
  --peers P               decentralised peers; only the optimizer's exchange crosses
                          between them (DisTrO payload / AdamW mean gradient), counted
                          in bytes_sent
  --data-parallelism D    replicas inside each peer, averaging gradients
                          (--fsdp: FSDP2 shards them instead of D full copies)
  --tensor-parallelism T  each layer's matrices split by the model plugin's plan
\b
  peer 0: [replica 0: tp0 tp1] [replica 1: tp0 tp1]  <- peer link ->  peer 1: ...
Under torchrun: one peer per node and D = ranks per node / T unless given.
See docs/parallelism.md.
"""


def make_train_command(plugins: Plugins) -> click.Command:
    try:
        declared = list(plugin_option_specs(plugins))
        owners = {option.key: owner for owner, option in declared}
        specs = collect_option_specs(declared)
    except PsycheError as exc:
        return _broken_train_command(exc)

    params: list[click.Parameter] = [
        click.Option(
            ["--config", "config"],
            type=click.Path(dir_okay=False),
            help="Read options from this TOML file (flags on the command line win).",
        )
    ]
    params += [click_option(s, owners.get(s.key)) for s in specs if s.cli]

    def callback(config: str | None, **values: Any) -> None:
        ctx = click.get_current_context()
        given = {
            key: value
            for key, value in values.items()
            if ctx.get_parameter_source(key) is ParameterSource.COMMANDLINE
        }
        from psyche_core import plan, run  # torch is imported only when training

        options = plan.resolve_run_options(specs, given, config)
        from_file = load_toml(config) if config else {}
        explicit = {key.replace("-", "_") for key in [*given, *from_file]}
        plan.check_optimizer_options(options, plugins, explicit)
        with stop_on_signals() as stop:
            summary = run.train(options, plugins, stop=stop)
        if summary.get("stopped"):
            raise click.exceptions.Exit(stop.exit_code)

    return click.Command("train", params=params, callback=callback, help=TRAIN_HELP)


def _broken_train_command(exc: PsycheError) -> click.Command:
    def callback(**_: Any) -> None:
        raise exc

    return click.Command(
        "train",
        callback=callback,
        help=f"Unavailable: {exc}",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
