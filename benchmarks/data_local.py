"""Local provider throughput against a plain numpy memmap copy of the same bytes.

Writes ``--megabytes`` of random uint16 tokens (4 files) to a temporary folder, warms the page
cache, then times batches of ``--batch`` x ``--sequence-length`` samples, shuffled (seeded) and
in file order:

- ``baseline``: the sample positions precomputed, each one copied out of an ``np.memmap`` into
  one uint16 array (the least work that reads the same bytes);
- ``read``: ``LocalDataProvider.read(ids)`` (sample addressing + int64 batch);
- ``get_samples``: the trainer's call (the same plus a ``TokenizedData`` per sample).

Prints one JSON object. ``python benchmarks/data_local.py`` takes about a minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _record
import numpy as np

from psyche_data.local import LocalDataProvider


def write_files(folder: Path, megabytes: int, files: int = 4) -> None:
    rng = np.random.default_rng(0)
    per_file = megabytes * (1 << 20) // 2 // files
    for i in range(files):
        rng.integers(0, 65536, per_file, dtype=np.uint16).tofile(folder / f"{i:05}.ds")


def timed(function, batches: int, batch: int) -> float:
    """Best-of-3 seconds per batch over ``batches`` batches."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for b in range(batches):
            function(range(b * batch, (b + 1) * batch))
        best = min(best, (time.perf_counter() - started) / batches)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sequence-length", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=40)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    length = args.sequence_length
    results = {}
    with tempfile.TemporaryDirectory(prefix="psyche-bench-") as tmp:
        folder = Path(tmp)
        write_files(folder, args.megabytes)
        for name in sorted(folder.iterdir()):  # warm the page cache
            np.fromfile(name, dtype=np.uint16).sum()
        for seed in (0, None):
            provider = LocalDataProvider(folder, length, token_size=2, seed=seed)
            batches = min(args.batches, provider.num_sequences // args.batch)
            where = provider.index.locate(range(batches * args.batch))
            maps = [np.memmap(p, dtype=np.uint16, mode="r") for p in provider.paths]
            files, offsets = where.file.tolist(), where.token_offset.tolist()

            def baseline(ids, maps=maps, files=files, offsets=offsets):
                out = np.empty((len(ids), length), dtype=np.uint16)
                for row, i in enumerate(ids):
                    out[row] = maps[files[i]][offsets[i] : offsets[i] + length]
                return out

            for i in (0, args.batch * batches - 1):  # same bytes, same order
                assert np.array_equal(baseline([i])[0], provider.read([i])[0])
            tokens = args.batch * length
            entry = {}
            for label, function in (
                ("baseline", baseline),
                ("read", provider.read),
                ("get_samples", provider.get_samples),
            ):
                seconds = timed(function, batches, args.batch)
                entry[label] = {
                    "ms_per_batch": round(seconds * 1e3, 2),
                    "samples_per_s": round(args.batch / seconds),
                    "tokens_per_s": round(tokens / seconds),
                    "MB_per_s": round(tokens * 2 / seconds / 1e6, 1),
                }
            for label in ("read", "get_samples"):
                entry[f"{label}_vs_baseline"] = round(
                    entry["baseline"]["ms_per_batch"] / entry[label]["ms_per_batch"], 2
                )
            results["shuffled" if seed is not None else "file_order"] = entry
            provider.close()
    _record.emit(
        {
            "benchmark": "local provider vs numpy memmap",
            "data_megabytes": args.megabytes,
            "batch": args.batch,
            "sequence_length": length,
            "batches": args.batches,
            **results,
        },
        args.save,
        "data_local",
    )


if __name__ == "__main__":
    main()
