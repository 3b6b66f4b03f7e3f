"""Data parallelism: bytes each peer sends per step, and step time of 2 gloo peers vs 1 process.

Runs a few steps of the ~20M Llama preset on the embedded sample data for AdamW (dense fp32 mean
gradient), DisTrO and DisTrO with 1-bit values, reading ``bytes_sent`` (counted at the
communicator) and ``step_time_s`` from each run's metrics. The global batch is the same in every
run, so two peers each do half the work of one process. Prints one JSON object.

    python benchmarks/dp_peers.py [--steps 6] [--batch 8] [--sequence-length 256]
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

OPTIMIZERS = {
    "adamw": {"optimizer": "adamw"},
    "distro": {"optimizer": "distro"},
    "distro-1bit": {"optimizer": "distro", "distro_quantization": True},
}


def measure(plugins: Plugins, shared: dict[str, Any], changes: dict[str, Any], skip: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        specs = all_option_specs(plugins)
        options = resolve(specs, {**shared, **changes, "metrics": str(metrics)})
        run.train(options, plugins, console=Console(stderr=True, quiet=True))
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    timed = rows[skip:]  # the first steps pay for warm-up
    return {
        "bytes_sent_per_peer_per_step": rows[-1]["bytes_sent"],
        "median_step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "final_loss": rows[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama:20m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=256)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    plugins = Plugins.load()
    shared = {
        "model": args.model,
        "total_steps": args.steps,
        "warmup_steps": 1,
        "total_batch": args.batch,
        "sequence_length": args.sequence_length,
        "seed": 1,
    }
    n_params = None
    results: dict[str, Any] = {}
    for name, changes in OPTIMIZERS.items():
        for peers, backend in ((1, "auto"), (2, "gloo")):
            key = f"{name}/{peers}-peer{'s' if peers > 1 else ''}"
            extra = {**changes, "peers": peers, "dp_backend": backend}
            results[key] = measure(plugins, shared, extra, skip=2)
    from psyche_core.resolve import resolve_model

    model = resolve_model(plugins, args.model).build(0)
    n_params = model.num_parameters()
    dense = 4 * n_params
    for value in results.values():
        value["ratio_vs_dense_fp32"] = round(dense / value["bytes_sent_per_peer_per_step"], 1)
    for name in OPTIMIZERS:
        one, two = results[f"{name}/1-peer"], results[f"{name}/2-peers"]
        results[f"{name}/speedup_2_gloo_peers"] = round(
            one["median_step_time_s"] / two["median_step_time_s"], 3
        )
    _record.emit(
        {"model": args.model, "parameters": n_params, "config": vars(args), "results": results},
        args.save,
        "dp_peers",
    )


if __name__ == "__main__":
    main()
