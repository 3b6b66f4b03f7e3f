"""psyche-eval's hook implementation: the ``psyche eval`` command (click only; lm-eval and torch
load when the command runs, so ``psyche list-plugins`` stays fast)."""

from __future__ import annotations

from psyche_core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from psyche_eval.cli import make_eval_command

    cli.add_command(make_eval_command())
