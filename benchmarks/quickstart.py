"""The README's quick-start run, timed: `psyche train` with its defaults, as a user runs it.

Not a side-by-side benchmark (there is no reference to compare with): it records what the README
quotes from that run (final loss, seconds, tokens/s, the first and last losses) with the command,
machine and load, so the quoted figures have a results file. About 90 s on 2 quiet CPU cores.

    python benchmarks/quickstart.py --save
    python benchmarks/quickstart.py --name quickstart_bf16_mixed --save -- --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import _record

DONE = re.compile(
    r"done: steps (?P<first>\d+)\.\.(?P<last>\d+), final loss (?P<loss>[\d.]+), "
    r"(?P<seconds>[\d.]+)s, (?P<rate>[\d,]+) tokens/s"
)
MFU = re.compile(r"(?P<tflops>[\d.e+-]+) model TFLOP/s(?: \(MFU (?P<mfu>[\d.]+)%\))?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_args", nargs="*", help="extra `psyche train` flags")
    _record.add_save_flag(parser)
    parser.add_argument("--name", default="quickstart", help="results/NAME.json for --save")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        command = ["psyche", "train", *args.train_args, "--metrics", str(metrics)]
        out = subprocess.run(
            [sys.executable, "-m", "psyche_core", *command[1:]],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "COLUMNS": "300"},  # the summary on one line
        )
        losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    done = DONE.search(out.stdout + out.stderr)
    if done is None:
        tail = (out.stdout + out.stderr)[-2000:]
        raise SystemExit(f"no 'done:' line in the output:\n{tail}")
    # the summary line as one line, whatever width the console wrapped it to
    line = " ".join((out.stdout + out.stderr)[done.start() :].split("\n\n")[0].split())
    throughput = MFU.search(line)
    _record.emit(
        {
            "benchmark": "quickstart",
            "psyche_command": " ".join(command[:-2]),
            "steps": int(done["last"]) - int(done["first"]) + 1,
            "first_loss": round(losses[0], 4),
            "final_loss": float(done["loss"]),
            "seconds": float(done["seconds"]),
            "tokens_per_s": int(done["rate"].replace(",", "")),
            "model_tflops": float(throughput["tflops"]) if throughput else None,
            "mfu_percent": float(throughput["mfu"]) if throughput and throughput["mfu"] else None,
            "done_line": line.strip(),
        },
        args.save,
        args.name,
    )


if __name__ == "__main__":
    main()
