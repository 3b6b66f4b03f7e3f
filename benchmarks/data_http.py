"""HTTP provider throughput over loopback against the local provider on the same files.

Writes ``--megabytes`` of random uint16 tokens (4 files) to a temporary folder and serves it
from child processes (so servers and client do not share a GIL): ``psyche data serve``
(answers several ranges per request), the same with ``--multipart-only`` (answers them as
standard ``multipart/byteranges`` even to psyche's client) and ``psyche data serve
--no-multi-range`` (answers them with the whole file, like a plain static server or a CDN
without multi-range). Then, in alternating rounds, times batches of ``--batch`` x
``--sequence-length`` samples:

- ``local``: the local provider (memory-mapped, page cache warm);
- ``http``: the http provider against ``psyche data serve`` (coalesced, multi-range,
  concurrent, read-ahead; the ranges come back to back, read straight into the batch);
- ``http_multipart``: the same against the ``--multipart-only`` server (what it gets from any
  other server that answers several ranges: parts to find and copy);
- ``http_plain``: the http provider against the plain server (one range per request, so it
  reads the samples of many steps ahead, through the gaps between them), with the default
  256 MiB of read-ahead, which here holds the whole data set: each byte is read about once;
- ``http_plain_quarter``: the same with read-ahead of a quarter of the data set, as the default
  would be for 1 GB of data: each fill wants about one sample in eight;
- ``before``: what the provider did before multi-range: one request per sample (adjacent
  samples merged), ``--connections`` at a time, against ``psyche data serve``.

Shuffled (seeded) and in file order, taking turns within each round (so their ratio is taken
under the same load on the host). Every reader keeps one provider for all rounds (the steady
state of a run); each round times ``--batches`` consecutive batches and then waits for the
reads started ahead of them, so work done ahead is paid in the round that started it, and the
rates are totals over all rounds (a round that starts a large read-ahead is slow, the next ones
fast). ``fetched_MB`` is what each provider's server sent, ``fetched_vs_used`` that over the
bytes of the batches timed (gaps read through, read-ahead past the last batch). Prints one JSON
object (with ``--save``, also writes benchmarks/results/data_http.json); takes a few minutes.

    python benchmarks/data_http.py --megabytes 128 --connections 16 --save
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _record
import numpy as np

from psyche_data.http import DEFAULT_CACHE_MEGABYTES, MAX_REQUEST_BYTES, HttpDataProvider, _runs
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


def time_batches(provider, read, batches: int, batch: int, first: int, local) -> float:
    """Seconds for ``batches`` consecutive batches, and for the reads started ahead of them
    to finish (so work done ahead is paid in the round that started it); the last batch is
    checked against the local provider."""
    started = time.perf_counter()
    for b in range(first, first + batches):
        ids = range(b * batch, (b + 1) * batch)
        last = read(ids)
    if provider is not None:
        provider.drain()
    seconds = time.perf_counter() - started
    assert np.array_equal(last, local.read(ids))
    return seconds


def make_readers(local, urls: dict[str, str], seed, connections: int, caches):
    """name -> ``(provider or None, read)``."""
    length = local.index.sequence_length
    options = dict(seed=seed, connections=connections, timeout=30)
    multi_files = resolve_sources(urls["multi"]).files
    multipart_files = resolve_sources(urls["multipart"]).files
    plain_files = resolve_sources(urls["plain"]).files
    http = HttpDataProvider(multi_files, length, **options)
    multipart = HttpDataProvider(multipart_files, length, **options)
    before = HttpDataProvider(multi_files, length, **options)
    readers = {
        "local": (None, local.read),
        "http": (http, http.read),
        "http_multipart": (multipart, multipart.read),
    }
    for name, cache in caches.items():
        plain = HttpDataProvider(plain_files, length, **options, cache_megabytes=cache)
        readers[name] = (plain, plain.read)
    readers["before"] = (before, lambda ids: read_before(before, ids))
    return readers


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
    _record.add_save_flag(parser)
    args = parser.parse_args()
    length, batch = args.sequence_length, args.batch
    sample_bytes = 2 * length
    caches = {  # default cache: more than the whole data set here; a quarter: as for 1 GB
        "http_plain": DEFAULT_CACHE_MEGABYTES,
        "http_plain_quarter": args.megabytes / 4,
    }
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="psyche-bench-") as tmp:
        folder = Path(tmp)
        write_files(folder, args.megabytes)
        for name in sorted(folder.iterdir()):  # warm the page cache
            np.fromfile(name, dtype=np.uint16).sum()
        servers, urls = {}, {}
        for name, flags in (
            ("multi", ()),
            ("multipart", ("--multipart-only",)),
            ("plain", ("--no-multi-range",)),
        ):
            servers[name], urls[name] = serve(folder, *flags)
        try:
            orders = {"shuffled": 0, "file_order": None}
            locals_ = {o: LocalDataProvider(folder, length, seed=s) for o, s in orders.items()}
            readers = {
                o: make_readers(locals_[o], urls, seed, args.connections, caches)
                for o, seed in orders.items()
            }
            num_sequences = locals_["shuffled"].num_sequences
            batches = min(args.batches, num_sequences // batch // args.rounds - 1)
            timings = {o: {name: [] for name in readers[o]} for o in orders}
            # alternating rounds, fresh batches each round; shuffled and file order take turns
            # too, so that their ratio is measured under the same load on the host
            for r in range(args.rounds):
                for order in orders:
                    for name, (provider, read) in readers[order].items():
                        first = 1 + r * batches
                        timings[order][name].append(
                            time_batches(provider, read, batches, batch, first, locals_[order])
                        )
            used = args.rounds * batches * batch * sample_bytes
            for order in orders:
                entry: dict[str, object] = {"batches": args.rounds * batches}
                times = timings[order]
                for name, seconds in times.items():
                    total = sum(seconds)
                    entry[name] = {
                        "ms_per_batch": round(total / (args.rounds * batches) * 1e3, 1),
                        "MB_per_s": round(used / total / 1e6, 1),
                        "round_seconds": [round(x, 2) for x in seconds],
                    }
                    provider = readers[order][name][0]
                    if provider is not None:
                        provider.close()
                        entry[name]["fetched_MB"] = round(provider.bytes_fetched / 1e6, 1)
                        entry[name]["fetched_vs_used"] = round(provider.bytes_fetched / used, 2)
                for name in times:
                    if name == "local":
                        continue
                    entry[f"{name}_vs_local"] = round(sum(times["local"]) / sum(times[name]), 3)
                    if name != "before":
                        entry[f"{name}_vs_before"] = round(
                            sum(times["before"]) / sum(times[name]), 2
                        )
                results[order] = entry
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(timeout=10)
    shuffled, ordered = results["shuffled"], results["file_order"]
    report = {
        "benchmark": "http provider over loopback vs local, before and after multi-range",
        "data_megabytes": args.megabytes,
        "batch": batch,
        "sequence_length": length,
        "connections": args.connections,
        "plain_cache_megabytes": caches,
        "rounds": args.rounds,
        **results,
        "shuffled_http_vs_file_order_http": round(
            shuffled["http"]["MB_per_s"] / ordered["http"]["MB_per_s"], 3
        ),
        "shuffled_http_multipart_vs_file_order_http_multipart": round(
            shuffled["http_multipart"]["MB_per_s"] / ordered["http_multipart"]["MB_per_s"], 3
        ),
    }
    _record.emit(report, args.save, "data_http")


if __name__ == "__main__":
    main()
