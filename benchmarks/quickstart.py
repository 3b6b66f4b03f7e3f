"""The README's quick-start run, timed: `psyche train` with its defaults, as a user runs it.

Not a side-by-side benchmark (there is no reference to compare with): it records what the README
quotes from that run (final loss, seconds, tokens/s, the first and last losses) with the command,
machine and load, so the quoted figures have a results file. About 90 s on 2 quiet CPU cores.

    python benchmarks/quickstart.py --save
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_args", nargs="*", help="extra `psyche train` flags")
    _record.add_save_flag(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        command = ["psyche", "train", *args.train_args, "--metrics", str(metrics)]
        out = subprocess.run(
            [sys.executable, "-m", "psyche_core", *command[1:]],
            capture_output=True,
            text=True,
            check=True,
        )
        losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    done = DONE.search(out.stdout + out.stderr)
    if done is None:
        tail = (out.stdout + out.stderr)[-2000:]
        raise SystemExit(f"no 'done:' line in the output:\n{tail}")
    _record.emit(
        {
            "benchmark": "quickstart",
            "psyche_command": " ".join(command[:-2]),
            "steps": int(done["last"]) - int(done["first"]) + 1,
            "first_loss": round(losses[0], 4),
            "final_loss": float(done["loss"]),
            "seconds": float(done["seconds"]),
            "tokens_per_s": int(done["rate"].replace(",", "")),
            "done_line": done.group(0),
        },
        args.save,
        "quickstart",
    )


if __name__ == "__main__":
    main()
