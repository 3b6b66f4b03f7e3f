"""`psyche data tokenize` throughput against the `tokenizers` batch-encode ceiling.

Writes a synthetic jsonl corpus of ``--megabytes`` (documents of Zipf-distributed English-like
words, seeded), then, in alternating rounds in this one process, times:

- ``ceiling``: ``Tokenizer.encode_batch_fast`` over the documents already in memory (1024 at
  a time), with the Rust thread pool on every core (no reading, no writing): what ``tokenizers``
  itself reaches;
- ``psyche_w1`` / ``psyche_w2``: the whole ``psyche data tokenize`` run (read the jsonl, encode,
  write shards, .idx and the manifest) with 1 and 2 worker processes.

Prints one JSON object (medians over ``--rounds``); with ``--save``, also writes
benchmarks/results/data_tokenize.json.

    python benchmarks/data_tokenize.py --tokenizer ../shared/fixtures/psyche/llama2_tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import _record
import numpy as np

from psyche_data.tokenize import TokenizeRequest, tokenize
from psyche_data.tokenizer_source import load_tokenizer


def write_corpus(path: Path, megabytes: int) -> list[str]:
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    words = ["".join(rng.choice(letters, rng.integers(1, 10))) for _ in range(20_000)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    texts, size = [], 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1_000_000:
            picked = rng.choice(len(words), int(rng.integers(50, 1500)), p=weights)
            text = " ".join(words[i] for i in picked).capitalize() + "."
            f.write(json.dumps({"text": text}) + "\n")
            texts.append(text)
            size += len(text)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    source = load_tokenizer(args.tokenizer)
    tokenizer = source.build()
    timings: dict[str, list[float]] = {"ceiling": [], "psyche_w1": [], "psyche_w2": []}
    tokens = 0
    with tempfile.TemporaryDirectory(prefix="psyche-tok-bench-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        texts = write_corpus(corpus, args.megabytes)
        text_bytes = sum(len(t.encode()) for t in texts)
        for _ in range(args.rounds):
            started = time.perf_counter()
            tokens = 0
            for at in range(0, len(texts), 1024):  # in slices: all Encodings at once take GBs
                encodings = tokenizer.encode_batch_fast(texts[at : at + 1024])
                tokens += sum(len(e.ids) for e in encodings)
            timings["ceiling"].append(time.perf_counter() - started)
            del encodings
            for workers in (1, 2):
                out = Path(tmp) / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                request = TokenizeRequest([str(corpus)], str(out), args.tokenizer, workers=workers)
                started = time.perf_counter()
                manifest = tokenize(request).manifest
                timings[f"psyche_w{workers}"].append(time.perf_counter() - started)
                assert manifest["documents"] == len(texts)
    results = {}
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        workers = {"ceiling": os.cpu_count() or 1, "psyche_w1": 1, "psyche_w2": 2}[name]
        results[name] = {
            "seconds": round(median, 2),
            "MB_per_s": round(text_bytes / median / 1e6, 2),
            "tokens_per_s": round(tokens / median),
            "tokens_per_s_per_worker": round(tokens / median / workers),
        }
    report = {
        "benchmark": "psyche data tokenize vs tokenizers encode_batch_fast",
        "tokenizer": source.name,
        "corpus_megabytes": round(text_bytes / 1e6, 1),
        "documents": len(texts),
        "tokens": tokens,
        "rounds": args.rounds,
        **results,
        "w2_vs_ceiling": round(timings_ratio(timings, "psyche_w2"), 3),
        "w1_vs_ceiling": round(timings_ratio(timings, "psyche_w1"), 3),
    }
    _record.emit(report, args.save, "data_tokenize")


def timings_ratio(timings: dict[str, list[float]], name: str) -> float:
    """Throughput of ``name`` over the ceiling's, from each round's pair (then the median)."""
    return statistics.median(c / p for c, p in zip(timings["ceiling"], timings[name]))


if __name__ == "__main__":
    main()
