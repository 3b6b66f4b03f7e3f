"""``psyche plot``: loss curves of one or more runs from their metrics JSONL files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from psyche_core.errors import PsycheError


def read_run(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise PsycheError(f"{path}: no such metrics file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise PsycheError(f"{path}:{number}: not a JSON line") from None
    if not rows or "loss" not in rows[0]:
        raise PsycheError(f"{path}: no metrics (expected the JSONL written by --metrics)")
    return rows


def run_label(path: Path) -> str:
    return path.parent.name if path.stem in ("metrics", "m") else path.stem


def plot_runs(paths: list[Path], output: Path, labels: list[str] | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PsycheError("psyche plot needs matplotlib: pip install 'psyche-core[plot]'") from None
    labels = labels or [run_label(p) for p in paths]
    if len(labels) != len(paths):
        raise PsycheError(f"{len(labels)} --label for {len(paths)} runs; give one per run")
    fig, (by_step, by_tokens, speed) = plt.subplots(1, 3, figsize=(15, 4.5))
    for path, label in zip(paths, labels):
        rows = read_run(path)
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        line = by_step.plot(steps, losses, label=label)[0]
        held_out = [r for r in rows if r.get("val_loss") is not None]
        axes = [(by_step, "step")]
        if "tokens" in rows[0]:
            by_tokens.plot([r["tokens"] for r in rows], losses, label=label)
            axes.append((by_tokens, "tokens"))
        for axis, x in axes if held_out else ():  # held-out loss: dashed, in the run's colour
            axis.plot(
                [r[x] for r in held_out],
                [r["val_loss"] for r in held_out],
                "--o",
                color=line.get_color(),
                markersize=3,
                label=f"{label} (held-out)",
            )
        if "tokens_per_s" in rows[0]:
            speed.plot(steps, [r["tokens_per_s"] for r in rows], label=label)
    for axis, x, y in (
        (by_step, "step", "loss"),
        (by_tokens, "tokens", "loss"),
        (speed, "step", "tokens/s"),
    ):
        axis.set_xlabel(x)
        axis.set_ylabel(y)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("curves.png"),
    show_default=True,
    help="The PNG to write.",
)
@click.option("--label", "labels", multiple=True, help="A name per run (default: file name).")
def plot_command(runs: tuple[Path, ...], output: Path, labels: tuple[str, ...]) -> None:
    """Draw loss against step and tokens (and tokens/s) for several runs on one chart.

    RUNS are metrics files written by `psyche train --metrics`, e.g. an AdamW and a DisTrO run.
    """
    written = plot_runs(list(runs), output, list(labels) or None)
    click.echo(f"wrote {written}")
