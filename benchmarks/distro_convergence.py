"""AdamW vs DisTrO on real training: loss curves, bytes per step and step time, side by side.

Runs ``psyche train`` (through ``psyche_core.run.train``) once per optimizer setting with the
same model, data, seed, schedule and peers, reads each run's metrics JSONL and prints one JSON
object: per run the final loss, the mean loss of the last ``--tail`` steps, bytes sent per step,
the median step time, and the whole loss curve.

This is a harness, not a test: the numbers depend on the model, the data and the step count.
The design notes that DisTrO trails AdamW on very small models (distro.md section 4), so a gap
on ``llama:20m`` is expected and is not by itself a bug.

    python benchmarks/distro_convergence.py --model llama:20m --data-path DATA --steps 500 \\
        --peers 2 --learning-rate 4e-4 [--runs adamw distro distro-sync distro-1bit]

Without ``--data-path`` the embedded sample data is used (fine for a smoke run, too small to
compare optimizers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _record
from rich.console import Console

from psyche_core import run
from psyche_core.options import all_option_specs, resolve
from psyche_core.plugins import Plugins

# Each run: the options that differ from the shared ones.
RUNS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw"},
    "distro": {"optimizer": "distro", "distro_mode": "psyche"},
    "distro-sync": {"optimizer": "distro", "distro_mode": "sync"},
    "distro-1bit": {"optimizer": "distro", "distro_mode": "psyche", "distro_quantization": True},
}


def train_once(plugins: Plugins, shared: dict[str, Any], changes: dict[str, Any], out: Path):
    specs = all_option_specs(plugins)
    metrics_path = out / "metrics.jsonl"
    options = resolve(specs, {**shared, **changes, "metrics": str(metrics_path)})
    run.train(options, plugins, console=Console(stderr=True, quiet=True))
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]], tail: int) -> dict[str, Any]:
    losses = [r["loss"] for r in rows]
    return {
        "steps": len(rows),
        "final_loss": losses[-1],
        f"mean_loss_last_{tail}": statistics.fmean(losses[-tail:]),
        "bytes_sent_per_step": statistics.median(r["bytes_sent"] for r in rows),
        "median_step_time_s": statistics.median(r["step_time_s"] for r in rows),
        "loss_curve": [round(x, 5) for x in losses],
    }


def parse_run(text: str) -> str:
    kind, _, lr = text.partition("@")
    if kind not in RUNS:
        raise argparse.ArgumentTypeError(f"unknown run {kind!r}; known: {', '.join(sorted(RUNS))}")
    if lr:
        float(lr)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama:20m")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=4e-4)
    parser.add_argument("--total-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument(
        "--peers", type=int, default=1, help="simulated peers (psyche train --peers)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tail", type=int, default=20, help="steps averaged for the end loss")
    parser.add_argument(
        "--runs",
        nargs="+",
        type=parse_run,
        default=["adamw", "distro"],
        help=f"runs among {', '.join(sorted(RUNS))}, each optionally NAME@LR (distro@2e-3)",
    )
    parser.add_argument("--dp-backend", default="auto", choices=["auto", "gloo", "threads"])
    parser.add_argument(
        "--distro-learning-rate",
        type=float,
        default=None,
        help="DisTrO's peak learning rate (default: --learning-rate)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="also draw the curves to a PNG")
    _record.add_save_flag(parser)
    args = parser.parse_args()

    shared = {
        "model": args.model,
        "data_path": args.data_path,
        "total_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "learning_rate": args.learning_rate,
        "total_batch": args.total_batch,
        "micro_batch": args.micro_batch,
        "sequence_length": args.sequence_length,
        "peers": args.peers,
        "dp_backend": args.dp_backend,
        "seed": args.seed,
    }
    plugins = Plugins.load()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            out = Path(tmp) / name
            out.mkdir()
            kind, _, lr = name.partition("@")
            changes = dict(RUNS[kind])
            if lr:
                changes["learning_rate"] = float(lr)
            elif kind != "adamw" and args.distro_learning_rate is not None:
                changes["learning_rate"] = args.distro_learning_rate
            results[name] = summarize(train_once(plugins, shared, changes, out), args.tail)
            results[name]["learning_rate"] = changes.get("learning_rate", args.learning_rate)
        if args.plot is not None:
            from psyche_core.cli.plot import plot_runs

            labels = [f"{n.split('@')[0]} (lr {results[n]['learning_rate']:g})" for n in args.runs]
            plot_runs([Path(tmp) / n / "metrics.jsonl" for n in args.runs], args.plot, labels)
    _record.emit(
        {"benchmark": "distro_convergence", **shared, "runs": results},
        args.save,
        "distro_convergence",
    )


if __name__ == "__main__":
    main()
