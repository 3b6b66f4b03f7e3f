"""Where a benchmark's figures came from: the command, the machine, the date and its load.

Every benchmark ends with `emit(result, args.save, "name")`: it adds a `recorded` block, prints the
JSON and, with `--save`, writes `benchmarks/results/<name>.json`, the file that docs quote (see
benchmarks/README.md, "Quoting a figure"). Importing this module notes the load average at start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_LOAD_AT_START = os.getloadavg()


def add_save_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON to benchmarks/results/"
    )


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def recorded() -> dict[str, Any]:
    """The provenance block: enough to rerun the command and judge how quiet the machine was."""
    argv = [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
    if argv[0].startswith(str(RESULTS.parents[1])):
        argv[0] = os.path.relpath(argv[0], RESULTS.parents[1])
    return {
        "command": "python " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        # 1/5/15-minute load averages; above the core count, other jobs were sharing the CPUs.
        "load_average_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def emit(result: dict[str, Any], save: bool, name: str) -> None:
    """Print the result with its provenance; with save, write results/<name>.json too."""
    result = {**result, "recorded": recorded()}
    text = json.dumps(result, indent=2)
    print(text)
    if save:
        path = RESULTS / f"{name}.json"
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
