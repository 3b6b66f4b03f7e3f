"""HTTP provider throughput over loopback against the local provider on the same files.

Writes ``--megabytes`` of random uint16 tokens (4 files) to a temporary folder and serves it
from two child processes (so servers and client do not share a GIL): ``psyche data serve``
(answers several ranges per request) and ``psyche data serve --no-multi-range`` (answers them
with the whole file, like a plain static server or a CDN without multi-range). Then, in
alternating rounds, times batches of ``--batch`` x ``--sequence-length`` samples:

- ``local``: the local provider (memory-mapped, page cache warm);
- ``http``: the http provider against ``psyche data serve`` (coalesced, multi-range,
  concurrent, read-ahead);
- ``http_plain``: the http provider against the plain server (one range per request, so it
  reads the samples of many steps ahead, through the gaps between them, with
  ``--plain-cache-megabytes`` of read-ahead; default a quarter of the data, as a 256 MiB cache
  would be for 1 GB of data);
- ``before``: what the provider did before multi-range: one request per sample (adjacent
  samples merged), ``--connections`` at a time, against ``psyche data serve``.

Shuffled (seeded) and in file order. Each round gives every reader a fresh provider and times
``--batches`` consecutive batches plus its ``close()``: the start-up (the first batch alone,
learning that the plain server ignores multi-range) and the read-ahead still in flight at the
end (fetched, never used) are in the time, so the rates are below a long run's steady state.
``useful_MB`` / ``fetched_MB`` are the bytes of the samples asked of the server and the bytes it
sent (gaps read through, read-ahead not used). Prints one JSON object of medians (with
``--save``, also writes benchmarks/results/data_http.json); takes a few minutes.

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
    http.bytes_useful += out.nbytes // 2
    http.bytes_fetched += out.nbytes // 2
    return out


def seconds_per_batch(make, batches: int, batch: int, first: int, local) -> tuple[float, dict]:
    """Time ``batches`` consecutive batches from a fresh reader, its close() included; check
    the last batch against the local provider; the reader's byte counts."""
    provider, read = make()
    started = time.perf_counter()
    for b in range(first, first + batches):
        ids = range(b * batch, (b + 1) * batch)
        last = read(ids)
    if provider is not None:
        provider.close()
    seconds = (time.perf_counter() - started) / batches
    assert np.array_equal(last, local.read(ids))
    counts = {}
    if provider is not None:
        counts = {"useful": provider.bytes_useful, "fetched": provider.bytes_fetched}
    return seconds, counts


def make_readers(local, multi_url: str, plain_url: str, seed, connections: int, cache: float):
    """name -> a function giving a fresh ``(provider or None, read)``."""
    length = local.index.sequence_length
    options = dict(seed=seed, connections=connections, timeout=30)
    multi_files = resolve_sources(multi_url).files
    plain_files = resolve_sources(plain_url).files

    def http(files=multi_files, **extra):
        provider = HttpDataProvider(files, length, **options, **extra)
        return provider, provider.read

    def before():
        provider = HttpDataProvider(multi_files, length, **options)
        return provider, lambda ids: read_before(provider, ids)

    return {
        "local": lambda: (None, local.read),
        "http": http,
        "http_plain": lambda: http(plain_files, cache_megabytes=cache),
        "before": before,
    }


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
    parser.add_argument("--batches", type=int, default=32, help="batches per reader and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--plain-cache-megabytes",
        type=float,
        default=None,
        help="read-ahead for http_plain (default: a quarter of --megabytes)",
    )
    _record.add_save_flag(parser)
    args = parser.parse_args()
    length, batch = args.sequence_length, args.batch
    sample_bytes = 2 * length
    plain_cache = args.plain_cache_megabytes or args.megabytes / 4
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
                readers = make_readers(
                    local, multi_url, plain_url, seed, args.connections, plain_cache
                )
                batches = min(args.batches, local.num_sequences // batch // args.rounds - 1)
                timings: dict[str, list[float]] = {name: [] for name in readers}
                counts: dict[str, list[dict]] = {name: [] for name in readers}
                for r in range(args.rounds):  # alternating rounds, fresh batches each round
                    for name, make in readers.items():
                        first = 1 + r * batches
                        seconds, bytes_read = seconds_per_batch(make, batches, batch, first, local)
                        timings[name].append(seconds)
                        counts[name].append(bytes_read)
                entry: dict[str, object] = {"batches_per_round": batches}
                for name, seconds in timings.items():
                    median = statistics.median(seconds)
                    entry[name] = {
                        "ms_per_batch": round(median * 1e3, 1),
                        "MB_per_s": round(batch * sample_bytes / median / 1e6, 1),
                    }
                    if counts[name][0].get("fetched"):
                        useful = sum(c["useful"] for c in counts[name]) / len(counts[name])
                        fetched = sum(c["fetched"] for c in counts[name]) / len(counts[name])
                        entry[name]["useful_MB"] = round(useful / 1e6, 1)
                        entry[name]["fetched_MB"] = round(fetched / 1e6, 1)
                        entry[name]["fetched_vs_used"] = round(
                            fetched / (batches * batch * sample_bytes), 2
                        )
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
        "plain_cache_megabytes": plain_cache,
        "rounds": args.rounds,
        **results,
        "shuffled_http_vs_file_order_http": round(
            shuffled["http"]["MB_per_s"] / ordered["http"]["MB_per_s"], 3
        ),
        "shuffled_http_plain_vs_file_order_http_plain": round(
            shuffled["http_plain"]["MB_per_s"] / ordered["http_plain"]["MB_per_s"], 3
        ),
    }
    _record.emit(report, args.save, "data_http")


if __name__ == "__main__":
    main()
