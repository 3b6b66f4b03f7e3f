"""HTTP provider throughput over loopback against the local provider on the same files.

Writes ``--megabytes`` of random uint16 tokens (4 files) to a temporary folder and serves it
from two child processes (so servers and client do not share a GIL): ``psyche data serve``
(answers several ranges per request) and ``psyche data serve --no-multi-range`` (answers them
with the whole file, like a plain static server or a CDN without multi-range). Then, in
alternating rounds, times batches of ``--batch`` x ``--sequence-length`` samples:

- ``local``: the local provider (memory-mapped, page cache warm);
- ``http``: the http provider against ``psyche data serve`` (coalesced, multi-range,
  concurrent, read-ahead);
- ``http_plain``: the http provider against the plain server (one range per request);
- ``before``: what the provider did before multi-range: one request per sample (adjacent
  samples merged), ``--connections`` at a time, against ``psyche data serve``.

Shuffled (seeded) and in file order. Prints one JSON object of medians (with ``--save``, also
writes benchmarks/results/data_http.json); takes a few minutes.

    python benchmarks/data_http.py --megabytes 128 --connections 16 --save
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _record
import numpy as np

from psyche_data.http import MAX_REQUEST_BYTES, HttpDataProvider, _runs
from psyche_data.local import LocalDataProvider
from psyche_data.sources import resolve_sources


def write_files(folder: Path, megabytes: int, files: int = 4) -> None:
    rng = np.random.default_rng(0)
    per_file = megabytes * (1 << 20) // 2 // files
    for i in range(files):
        rng.integers(0, 65536, per_file, dtype=np.uint16).tofile(folder / f"{i:05}.ds")


def read_before(http: HttpDataProvider, ids) -> np.ndarray:
    """The provider's read before this change: a request per run of adjacent samples."""
    where = http.index.locate(ids)
    length = http.index.sequence_length
    out = np.empty((len(where.file), length), dtype=np.int32)
    runs = _runs(where.file, where.token_offset, length, MAX_REQUEST_BYTES // 2)
    calls = [(http.urls[f], offset * 2, count * length * 2) for f, offset, count, _ in runs]
    for (_, _, count, rows), data in zip(runs, http.client.map(http.client.read, calls)):
        out[rows] = np.frombuffer(data, dtype="<u2").reshape(count, length)
    return out


def seconds_per_batch(read, batches: int, batch: int, first: int) -> float:
    started = time.perf_counter()
    for b in range(first, first + batches):
        read(range(b * batch, (b + 1) * batch))
    return (time.perf_counter() - started) / batches


def serve(folder: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    code = "import sys; from psyche_data.cli import data; data(sys.argv[1:])"
    server = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(folder), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return server, server.stdout.readline().split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sequence-length", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    length, batch = args.sequence_length, args.batch
    sample_bytes = 2 * length
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="psyche-bench-") as tmp:
        folder = Path(tmp)
        write_files(folder, args.megabytes)
        for name in sorted(folder.iterdir()):  # warm the page cache
            np.fromfile(name, dtype=np.uint16).sum()
        multi, multi_url = serve(folder)
        plain, plain_url = serve(folder, "--no-multi-range")
        try:
            for order, seed in (("shuffled", 0), ("file_order", None)):
                local = LocalDataProvider(folder, length, seed=seed)
                options = dict(seed=seed, connections=args.connections, timeout=30)
                providers = {
                    "http": HttpDataProvider(resolve_sources(multi_url).files, length, **options),
                    "http_plain": HttpDataProvider(
                        resolve_sources(plain_url).files, length, **options
                    ),
                }
                before = HttpDataProvider(resolve_sources(multi_url).files, length, **options)
                readers = {
                    "local": local.read,
                    **{k: p.read for k, p in providers.items()},
                    "before": lambda ids, b=before: read_before(b, ids),
                }
                for name, read in readers.items():  # same samples everywhere
                    assert np.array_equal(read(range(batch)), local.read(range(batch))), name
                per_round = local.num_sequences // batch // args.rounds
                batches = min(args.batches, per_round)
                timings: dict[str, list[float]] = {name: [] for name in readers}
                for r in range(args.rounds):  # alternating rounds, fresh batches each round
                    for name, read in readers.items():
                        first = 1 + r * batches
                        timings[name].append(seconds_per_batch(read, batches, batch, first))
                entry: dict[str, object] = {}
                for name, seconds in timings.items():
                    median = statistics.median(seconds)
                    entry[name] = {
                        "ms_per_batch": round(median * 1e3, 1),
                        "MB_per_s": round(batch * sample_bytes / median / 1e6, 1),
                    }
                for name in ("http", "http_plain", "before"):
                    entry[f"{name}_vs_local"] = round(
                        statistics.median(a / b for a, b in zip(timings["local"], timings[name])),
                        3,
                    )
                for name in ("http", "http_plain"):
                    entry[f"{name}_vs_before"] = round(
                        statistics.median(a / b for a, b in zip(timings["before"], timings[name])),
                        2,
                    )
                results[order] = entry
                for provider in (*providers.values(), before):
                    provider.close()
        finally:
            for server in (multi, plain):
                server.terminate()
                server.wait(timeout=10)
    shuffled, ordered = results["shuffled"], results["file_order"]
    report = {
        "benchmark": "http provider over loopback vs local, before and after multi-range",
        "data_megabytes": args.megabytes,
        "batch": batch,
        "sequence_length": length,
        "connections": args.connections,
        "rounds": args.rounds,
        **results,
        "shuffled_http_vs_file_order_http": round(
            shuffled["http"]["MB_per_s"] / ordered["http"]["MB_per_s"], 3
        ),
    }
    _record.emit(report, args.save, "data_http")


if __name__ == "__main__":
    main()
