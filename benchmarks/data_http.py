"""HTTP provider throughput over loopback against the local provider on the same files.

Writes ``--megabytes`` of random uint16 tokens (4 files) to a temporary folder, serves it with
``psyche data serve`` in a child process (so server and client do not share a GIL), and times
batches of ``--batch`` x ``--sequence-length`` samples, shuffled (seeded: one range request per
sample, ``--connections`` at a time) and in file order (adjacent samples coalesced into one
request per file run). Prints one JSON object; takes about a minute.

    python benchmarks/data_http.py --megabytes 128 --connections 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from psyche_data.http import HttpDataProvider
from psyche_data.local import LocalDataProvider
from psyche_data.sources import resolve_sources


def write_files(folder: Path, megabytes: int, files: int = 4) -> None:
    rng = np.random.default_rng(0)
    per_file = megabytes * (1 << 20) // 2 // files
    for i in range(files):
        rng.integers(0, 65536, per_file, dtype=np.uint16).tofile(folder / f"{i:05}.ds")


def rate(function, batches: int, batch: int, bytes_per_sample: int) -> dict[str, float]:
    started = time.perf_counter()
    for b in range(batches):
        function(range(b * batch, (b + 1) * batch))
    seconds = (time.perf_counter() - started) / batches
    return {
        "ms_per_batch": round(seconds * 1e3, 1),
        "samples_per_s": round(batch / seconds),
        "MB_per_s": round(batch * bytes_per_sample / seconds / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sequence-length", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    length = args.sequence_length
    results = {}
    with tempfile.TemporaryDirectory(prefix="psyche-bench-") as tmp:
        folder = Path(tmp)
        write_files(folder, args.megabytes)
        for name in sorted(folder.iterdir()):  # warm the page cache
            np.fromfile(name, dtype=np.uint16).sum()
        code = "import sys; from psyche_data.cli import data; data(sys.argv[1:])"
        server = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            url = server.stdout.readline().split()[-1]
            files = resolve_sources(url).files
            for seed in (0, None):
                local = LocalDataProvider(folder, length, seed=seed)
                http = HttpDataProvider(
                    files, length, seed=seed, connections=args.connections, timeout=30
                )
                assert np.array_equal(http.read(range(8)), local.read(range(8)))
                batches = min(args.batches, local.num_sequences // args.batch)
                entry = {
                    "local": rate(local.get_samples, batches, args.batch, 2 * length),
                    "http": rate(http.get_samples, batches, args.batch, 2 * length),
                }
                entry["http_vs_local"] = round(
                    entry["http"]["MB_per_s"] / entry["local"]["MB_per_s"], 3
                )
                results["shuffled" if seed is not None else "file_order"] = entry
                http.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(
        json.dumps(
            {
                "benchmark": "http provider over loopback vs local",
                "data_megabytes": args.megabytes,
                "batch": args.batch,
                "sequence_length": length,
                "connections": args.connections,
                **results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
