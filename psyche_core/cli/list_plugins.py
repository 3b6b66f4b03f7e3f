"""``psyche list-plugins``: what is installed, what each plugin registers, what is broken."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from psyche_core.plugins import PluginInfo, Plugins


def plugin_record(plugins: Plugins, info: PluginInfo) -> dict[str, Any]:
    models = []
    for name in info.models:
        if name in plugins.models and plugins.models.owner(name).plugin == info.name:
            spec = plugins.models.get_unchecked(name)
            models.append(
                {
                    "name": name,
                    "model_types": list(spec.model_types),
                    "architectures": list(spec.architectures),
                    "presets": list(spec.presets),
                    "default_preset": spec.preset_for_default,
                }
            )
        else:
            models.append({"name": name, "conflict": True})
    return {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "module": info.module,
        "builtin": info.builtin,
        "ok": info.error is None,
        "error": info.error,
        "models": models,
        "data_providers": info.data_providers,
        "optimizers": info.optimizers,
        "reporters": info.reporters,
        "evaluators": info.evaluators,
        "commands": info.commands,
    }


def make_list_plugins_command(plugins: Plugins) -> click.Command:
    @click.command("list-plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    def list_plugins(as_json: bool) -> None:
        """Show installed plugins, what each registers, and any that failed to load."""
        records = [plugin_record(plugins, info) for info in plugins.infos]
        conflicts = [str(c) for c in plugins.conflicts()]
        if as_json:
            click.echo(json.dumps({"plugins": records, "conflicts": conflicts}, indent=2))
            return
        console = Console()
        table = Table(title="psyche plugins", show_lines=True)
        for column in ("plugin", "distribution", "registers", "status"):
            table.add_column(column, overflow="fold")
        for rec in records:
            dist = f"{rec['distribution'] or '?'} {rec['version'] or ''}".strip()
            status = "[green]ok[/green]" if rec["ok"] else f"[red]error[/red]: {rec['error']}"
            table.add_row(rec["name"], dist, _registers(rec), status)
        console.print(table)
        for conflict in conflicts:
            console.print(f"[red]conflict[/red]: {conflict}", highlight=False)
        broken = [i for i in plugins.infos if i.traceback]
        if broken and os.environ.get("PSYCHE_DEBUG"):
            for info in broken:
                console.print(f"[bold]{info.name}[/bold]\n{info.traceback}", highlight=False)
        elif broken:
            console.print("set PSYCHE_DEBUG=1 for tracebacks", style="dim")

    return list_plugins


def _registers(rec: dict[str, Any]) -> str:
    lines = []
    for model in rec["models"]:
        if model.get("conflict"):
            lines.append(f"model {model['name']} (name clash)")
            continue
        hf_names = ", ".join(model["architectures"] or model["model_types"]) or "-"
        presets = ", ".join(model["presets"]) or "-"
        lines.append(f"model {model['name']}  (HF: {hf_names}; presets: {presets})")
    kinds = (
        ("data provider", "data_providers"),
        ("optimizer", "optimizers"),
        ("reporter", "reporters"),
        ("evaluator", "evaluators"),
    )
    for kind, key in kinds:
        lines.extend(f"{kind} {name}" for name in rec[key])
    lines.extend(f"command psyche {name}" for name in rec["commands"])
    return "\n".join(lines) or "-"
