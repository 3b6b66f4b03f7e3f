"""``psyche compare``: train the same run under several optimizer settings and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from psyche_core.compare import PER_RUN
from psyche_core.errors import PsycheError
from psyche_core.options import collect_option_specs, plugin_option_specs
from psyche_core.plugins import Plugins
from psyche_core.signals import stop_on_signals

COMPARE_HELP = """Train the same model on the same data, seed and token budget under each
optimizer SETTING, each at its best learning rate, and write one report.

A SETTING is an optimizer name with optional overrides of its own flags, by the flag's name or
its last word: adamw, distro, distro:topk=32,chunk=16,decay=0.995, distro:quantization. With
--lr-sweep every setting trains at each rate and the best run is kept (by held-out loss with
--eval-every, else by the mean training loss of the last steps). --out gets report.md,
curves.png (loss against tokens and against bytes sent) and every run's metrics; an interrupted
compare continues with --resume. Every psyche train option applies to all runs.

Example: psyche compare adamw distro distro:topk=32 --lr-sweep 3e-4,1e-3,3e-3 --out report/
"""


def make_compare_command(plugins: Plugins) -> click.Command:
    from psyche_core.cli.train import click_option

    try:
        declared = list(plugin_option_specs(plugins))
        specs = collect_option_specs(declared)
    except PsycheError as exc:
        message = str(exc)

        def broken(**_: Any) -> None:
            raise PsycheError(message)

        return click.Command("compare", callback=broken, help=f"Unavailable: {message}")
    owners = {option.key: owner for owner, option in declared}
    params: list[click.Parameter] = [
        click.Argument(["settings"], nargs=-1, required=True),
        click.Option(
            ["--lr-sweep", "lr_sweep"],
            help="Comma-separated learning rates to try for every setting (default: "
            "--learning-rate only).",
        ),
        click.Option(
            ["--out", "out"],
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Report folder (new or empty, or a compare's with --resume).",
        ),
        click.Option(
            ["--resume/--no-resume", "resume_compare"],
            default=False,
            help="Continue the compare in --out, skipping finished runs.",
        ),
        click.Option(["--steps", "steps"], type=int, help="Same as --total-steps."),
        click.Option(
            ["--config", "config"],
            type=click.Path(dir_okay=False),
            help="Read train options from this TOML file (flags win).",
        ),
    ]
    params += [click_option(s, owners.get(s.key)) for s in specs if s.cli and s.key not in PER_RUN]
    params.append(click_option(next(s for s in specs if s.key == "learning_rate")))

    def callback(
        settings: tuple[str, ...],
        lr_sweep: str | None,
        out: Path,
        resume_compare: bool,
        steps: int | None,
        config: str | None,
        **values: Any,
    ) -> None:
        from psyche_core import run
        from psyche_core.compare import parse_learning_rates, parse_setting, run_compare
        from psyche_core.options import resolve

        ctx = click.get_current_context()
        given = {
            key: value
            for key, value in values.items()
            if ctx.get_parameter_source(key) is ParameterSource.COMMANDLINE
        }
        if steps is not None:
            given["total_steps"] = steps
        options = resolve(specs, given, config)
        parsed = [parse_setting(text, plugins, specs) for text in settings]
        rates = parse_learning_rates(lr_sweep)
        with stop_on_signals() as stop:
            rows = run_compare(
                options,
                parsed,
                rates,
                out,
                plugins,
                resume_compare,
                lambda run_options: run.train(run_options, plugins, stop=stop),
                say=lambda line: click.echo(line, err=True),
            )
        for row in rows:
            click.echo(
                f"{row['setting']}: lr {row['learning_rate']:g}, loss {row['loss']:.4f}"
                + (f", held-out {row['val_loss']:.4f}" if row["val_loss"] is not None else "")
                + f", {row['bytes_per_step']:,.0f} bytes/peer/step"
            )
        click.echo(f"report: {out / 'report.md'}")

    return click.Command("compare", params=params, callback=callback, help=COMPARE_HELP)
