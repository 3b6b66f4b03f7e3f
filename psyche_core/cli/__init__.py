"""The ``psyche`` command line.

``make_cli(plugins)`` builds the Click group for one plugin set (tests build their own);
``main()`` is the console-script entry point and the one place where a
:class:`~psyche_core.errors.PsycheError` becomes a one-line message and an exit status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from psyche_core import __version__
from psyche_core.cli.compare import make_compare_command
from psyche_core.cli.generate import make_generate_command
from psyche_core.cli.list_plugins import make_list_plugins_command
from psyche_core.cli.plot import plot_command
from psyche_core.cli.train import make_train_command
from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins

DEBUG_ENV = "PSYCHE_DEBUG"
QUIET_COMMANDS = {"list-plugins", "plot"}  # commands that report plugin problems themselves


def make_cli(plugins: Plugins) -> click.Group:
    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, prog_name="psyche")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """psyche: design, train and compare causal language models with AdamW or DisTrO.

        Models, data providers and optimizers come from plugins; `psyche list-plugins` shows
        what is installed.
        """
        ctx.obj = plugins  # plugin commands find the plugin set with ctx.find_object(Plugins)
        if ctx.invoked_subcommand not in QUIET_COMMANDS:
            plugins.warn_problems()

    cli.add_command(make_train_command(plugins))
    cli.add_command(make_list_plugins_command(plugins))
    cli.add_command(make_generate_command(plugins))
    cli.add_command(make_compare_command(plugins))
    cli.add_command(plot_command)
    plugins.add_commands(cli)
    return cli


def main(argv: Sequence[str] | None = None, plugins: Plugins | None = None) -> None:
    """Console-script entry point (``plugins`` lets tests pass their own plugin set)."""
    debug = bool(os.environ.get(DEBUG_ENV))
    try:
        cli = make_cli(plugins if plugins is not None else Plugins.load())
        code = cli.main(
            args=list(argv) if argv is not None else None, prog_name="psyche", standalone_mode=False
        )
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except PsycheError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
