"""AdamW against DisTrO, each at its swept best learning rate, run with `psyche compare` itself.

Two studies, each a growing compare (stage 1 a grid, stage 2 more learning rates for the best):

- ``tiny``: `llama:tiny` on the embedded sample data, 300 steps of 16 x 256 tokens on 2 peers,
  held-out loss on the data's last 64 sequences. Stage 1: AdamW and DisTrO over chunk {64, 32, 16}
  x top-k {4, 16, 32} x decay {0.999, 0.995}, all at lr 4e-3. Stage 2: AdamW at 1e-3 and 2e-3,
  and the three best DisTrO settings at 2e-3 and 8e-3. Stage 3: the best DisTrO setting at 0.75x
  and 1.5x its best rate, and the two best with 1-bit values at their best rate.
- ``20m``: `llama:20m` on real text: the Python 3.11 standard library's source (every ``.py``
  outside the test folders, sorted by path, one document per file) tokenized with the Llama 2
  tokenizer by `psyche data tokenize` (3.8M tokens; the fineweb fixture's 6K tokens are too few
  to train on). bf16-mixed, 200 steps of 16 x 256 tokens on 2 peers, held-out loss on the last
  128 sequences: AdamW at 1e-3 and 3e-3, the tiny grid's best DisTrO setting and Psyche's
  production setting (chunk 64, top-k 4, decay 0.999) at 4e-3 and 8e-3.

In both, a setting whose best rate is the lowest or highest it tried is trained once more at
half or twice that rate (``widen``), so no reported best sits on the edge of its sweep.

Each study's compare folder is ``benchmarks/results/compare_<study>/`` (report.md, curves.png,
every run's metrics); an interrupted study continues where it stopped. Then writes
``benchmarks/results/distro_study.json``: each study's table, the best AdamW and DisTrO runs,
the gap between them and the bytes ratio, against the goal (a DisTrO setting within 5% of the
best AdamW loss while sending >= 100x fewer bytes per peer per step).

    python benchmarks/distro_study.py --study tiny --study 20m --save
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _record

RESULTS = _record.RESULTS
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
TOKENIZER = Path(__file__).resolve().parents[2] / "shared/fixtures/psyche/llama2_tokenizer.json"
PRODUCTION = "distro:chunk=64,topk=4,decay=0.999"
PSYCHE = [sys.executable, "-m", "psyche_core"]  # the CLI of this interpreter's environment
GOAL_GAP = 0.05
GOAL_BYTES = 100

TINY = [
    "--model", "llama:tiny", "--steps", "300", "--peers", "2",
    "--eval-every", "100", "--eval-holdout", "64",
]  # fmt: skip
GRID = [
    f"distro:chunk={chunk},topk={topk},decay={decay}"
    for chunk in (64, 32, 16)
    for topk in (4, 16, 32)
    for decay in (0.999, 0.995)
]


def compare(out: Path, base: list[str], settings: list[str], rates: str) -> list[dict]:
    command = [*PSYCHE, "compare", *base, *settings, "--lr-sweep", rates, "--out", str(out)]
    if (out / "compare.json").is_file():
        command.append("--resume")
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def widen(out: Path, base: list[str], rows: list[dict]) -> list[dict]:
    """Once more for each setting whose best rate is the edge of those tried: at half the
    lowest or twice the highest rate, so no best is a boundary of the sweep."""
    for row in list(rows):
        tried = row["tried"]
        if len(tried) < 2:
            continue
        if row["learning_rate"] == min(tried):
            rows = compare(out, base, [row["setting"]], f"{min(tried) / 2:g}")
        elif row["learning_rate"] == max(tried):
            rows = compare(out, base, [row["setting"]], f"{max(tried) * 2:g}")
    return rows


def best_distro(rows: list[dict], count: int) -> list[str]:
    distro = [r for r in rows if r["setting"].startswith("distro")]
    return [r["setting"] for r in sorted(distro, key=score)[:count]]


def score(row: dict) -> float:
    return row["val_loss"] if row["val_loss"] is not None else row["loss"]


def run_tiny() -> list[dict]:
    out = RESULTS / "compare_tiny"
    rows = compare(out, TINY, ["adamw", *GRID], "4e-3")
    compare(out, TINY, ["adamw"], "1e-3,2e-3")
    rows = compare(out, TINY, best_distro(rows, 3), "2e-3,8e-3")
    # stage 3: the best setting between its neighbouring rates, and the two best with 1-bit
    # values (fewer bytes again) at their best rate
    best = next(r for r in rows if r["setting"] == best_distro(rows, 1)[0])
    lr = best["learning_rate"]
    rows = compare(out, TINY, [best["setting"]], f"{lr * 0.75:g},{lr * 1.5:g}")
    for setting in best_distro(rows, 2):
        rate = next(r["learning_rate"] for r in rows if r["setting"] == setting)
        rows = compare(out, TINY, [f"{setting},quantization"], f"{rate:g}")
    return widen(out, TINY, rows)


def build_corpus(folder: Path) -> Path:
    """The standard library's source as token shards (kept between calls)."""
    shards = folder / "stdlib-llama2"
    if (shards / "manifest.json").is_file():
        return shards
    skip = ("/test/", "/tests/", "/idle_test/", "/site-packages/")
    files = sorted(
        str(p) for p in STDLIB.rglob("*.py") if not any(s in f"{p.as_posix()}/" for s in skip)
    )
    command = [*PSYCHE, "data", "tokenize", *files, "--tokenizer", str(TOKENIZER)]
    subprocess.run([*command, "--out", str(shards)], check=True, stdout=subprocess.DEVNULL)
    return shards


def run_20m(corpus_folder: Path, tiny_rows: list[dict]) -> list[dict]:
    shards = build_corpus(corpus_folder)
    base = [
        "--model", "llama:20m", "--data-path", str(shards), "--steps", "200", "--peers", "2",
        "--precision", "bf16-mixed", "--eval-every", "100", "--eval-holdout", "128",
    ]  # fmt: skip
    out = RESULTS / "compare_20m"
    compare(out, base, ["adamw"], "1e-3,3e-3")
    grid_rows = [r for r in tiny_rows if r["setting"] in GRID]  # the tiny grid's best
    settings = list(dict.fromkeys([*best_distro(grid_rows, 1), PRODUCTION]))
    return widen(out, base, compare(out, base, settings, "4e-3,8e-3"))


def verdict(rows: list[dict]) -> dict:
    adamw = min((r for r in rows if r["setting"].startswith("adamw")), key=score)
    distro = [r for r in rows if r["setting"].startswith("distro")]
    for r in distro:
        r["gap_vs_best_adamw"] = round(score(r) / score(adamw) - 1, 4)
        r["fewer_bytes_than_adamw"] = round(adamw["bytes_per_step"] / r["bytes_per_step"], 1)
    best = min(distro, key=score)
    meets = [
        r["setting"]
        for r in distro
        if r["gap_vs_best_adamw"] <= GOAL_GAP and r["fewer_bytes_than_adamw"] >= GOAL_BYTES
    ]
    return {
        "scored_by": "held-out loss" if adamw["val_loss"] is not None else "training loss",
        "best_adamw": adamw,
        "best_distro": best,
        "best_distro_gap": best["gap_vs_best_adamw"],
        "settings_meeting_goal": meets,
        "table": sorted(rows, key=score),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", action="append", choices=("tiny", "20m"), required=True)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/psyche-distro-study"))
    _record.add_save_flag(parser)
    args = parser.parse_args()
    studies = {}
    tiny_rows = run_tiny() if "tiny" in args.study else None
    if tiny_rows is not None:
        studies["tiny"] = verdict(tiny_rows)
    if "20m" in args.study:
        if tiny_rows is None:
            tiny_rows = json.loads((RESULTS / "compare_tiny" / "summary.json").read_text())
        studies["20m"] = verdict(run_20m(args.corpus, tiny_rows))
    report = {
        "benchmark": "distro_study",
        "goal": f"DisTrO within {GOAL_GAP:.0%} of the best AdamW loss at the same tokens, "
        f">= {GOAL_BYTES}x fewer bytes per peer per step",
        **studies,
    }
    _record.emit(report, args.save, "distro_study")


if __name__ == "__main__":
    main()
