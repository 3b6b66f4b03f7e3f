"""How long the trainer waits for data: local files and a loopback `psyche data serve`.

Trains ``--model`` for ``--steps`` steps on random tokens (vocab 512) read with the local
provider, then with the http provider from a data server in a child process, shuffled (one range
request per sample). The trainer prefetches the next step's batch during the current step;
``data_wait_s`` is how long a step still waited. Prints one JSON object with the wait as a share
of step time (target: under 5%).

    python benchmarks/data_prefetch.py [--model llama:tiny] [--steps 30] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _record
import numpy as np
from rich.console import Console

from psyche_core import run
from psyche_core.options import all_option_specs, resolve
from psyche_core.plugins import Plugins


def train(plugins: Plugins, values: dict, metrics: Path) -> dict:
    specs = all_option_specs(plugins)
    run.train(
        resolve(specs, {**values, "metrics": str(metrics)}),
        plugins,
        console=Console(stderr=True, quiet=True),
    )
    rows = [json.loads(line) for line in metrics.read_text().splitlines()][2:]  # after warm-up
    waits = [r["data_wait_s"] for r in rows]
    steps = [r["step_time_s"] for r in rows]
    return {
        "median_step_time_s": statistics.median(steps),
        "median_data_wait_s": statistics.median(waits),
        "max_data_wait_s": max(waits),
        "data_wait_share": sum(waits) / sum(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama:tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
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
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tokens"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            rng.integers(3, 512, 4 << 20, dtype=np.uint16).tofile(folder / f"{i:05}.ds")
        results = {
            "local": train(plugins, {**shared, "data_path": str(folder)}, Path(tmp) / "local.jsonl")
        }
        code = "import sys; from psyche_data.cli import data; data(sys.argv[1:])"
        server = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = server.stdout.readline().split()[-1]
            results["http-loopback"] = train(
                plugins,
                {**shared, "data_provider": "http", "data_url": url},
                Path(tmp) / "http.jsonl",
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    _record.emit({"config": vars(args), "results": results}, args.save, "data_prefetch")


if __name__ == "__main__":
    main()
