"""Fault injection: kill ``psyche train --checkpoint-every 1`` at random points, resume, and
check that the resumed run reaches the uninterrupted run's final loss exactly.

Each trial starts a run in a child process that SIGKILLs itself (no cleanup, as a power cut or
the OOM killer would) at a random call of one phase:

- ``forward``: inside the model's forward pass;
- ``optimizer``: inside the optimizer step (weights half updated in memory);
- ``checkpoint``: inside a checkpoint write (a weight file half written, or every file written
  but not yet the manifest);
- ``data``: inside a data fetch (on the prefetch thread);
- ``anywhere``: the parent sends SIGKILL after a random delay.

Then ``psyche train --resume SAVE_PATH`` runs (again, if a trial killed it before any
checkpoint) until the run is complete, and the last step's loss is compared with the
uninterrupted run's, exactly. Uses the toy model of the core tests, so a trial takes a few
seconds (mostly Python start-up). Prints one JSON object and writes
``benchmarks/results/faults.json``.

    python benchmarks/faults.py --trials 50
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from psyche_core import checkpoint

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("forward", "optimizer", "checkpoint", "data", "anywhere")
TOTAL_STEPS = 10
RUN_FLAGS = [
    "--model",
    "toy",
    "--data-provider",
    "toy",
    "--sequence-length",
    "32",
    "--total-batch",
    "8",
    "--micro-batch",
    "4",
    "--total-steps",
    str(TOTAL_STEPS),
    "--warmup-steps",
    "2",
    "--learning-rate",
    "0.03",
    "--seed",
    "3",
    "--checkpoint-every",
    "1",
]


def child(phase: str, kill_at: int, argv: list[str]) -> None:
    """Run the CLI with ``phase``'s function wrapped to SIGKILL this process at its
    ``kill_at``-th call."""
    from psyche_core import adamw
    from psyche_core.cli import main
    from psyche_core.plugins import Plugins
    from tests.core import toy_plugin

    calls = {"n": 0}

    def killing(function, halfway=False):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at:
                if halfway:  # leave a partial file behind, as a cut-off write would
                    function(*args, **kwargs)
                    path = Path(args[1])
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return wrapper

    if phase == "forward":
        model = toy_plugin.ToyForCausalLM
        model.forward = killing(model.forward)
    elif phase == "optimizer":
        adamw.AdamW.step = killing(adamw.AdamW.step)
    elif phase == "data":
        data = toy_plugin.PatternData
        data.get_samples = killing(data.get_samples)
    elif phase == "checkpoint":
        if kill_at % 2:
            import safetensors.torch

            safetensors.torch.save_file = killing(safetensors.torch.save_file, halfway=True)
        else:
            checkpoint.write_manifest = killing(checkpoint.write_manifest)
    main(argv, plugins=Plugins.load(entry_points=False, extra=[toy_plugin]))


def run_child(phase: str, kill_at: int, argv: list[str], delay: float | None = None) -> int:
    command = [sys.executable, __file__, "--child", phase, str(kill_at), "--", *argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if delay is not None:
        time.sleep(delay)
        process.kill()
    _, err = process.communicate(timeout=600)
    if process.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"child failed ({process.returncode}):\n{err[-3000:]}")
    return process.returncode


def final_loss(metrics: Path) -> tuple[int, float]:
    last = json.loads(metrics.read_text().splitlines()[-1])
    return last["step"], last["loss"]


def trial(folder: Path, phase: str, rng: random.Random) -> dict:
    save, metrics = folder / "run", folder / "metrics.jsonl"
    argv = ["train", *RUN_FLAGS, "--save-path", str(save), "--metrics", str(metrics)]
    # Calls per step: forward 2 (micro-batches), optimizer 1, data fetch 1, checkpoint 1
    # weight file (peer states go in as bytes) and 1 manifest.
    per_run = {"forward": 2 * TOTAL_STEPS, "optimizer": TOTAL_STEPS, "data": TOTAL_STEPS}
    kill_at = rng.randint(1, per_run.get(phase, TOTAL_STEPS))
    delay = rng.uniform(2.0, 6.0) if phase == "anywhere" else None
    code = run_child(phase, kill_at, argv, delay)
    resumes = 0
    last = save / checkpoint.step_dir_name(TOTAL_STEPS)
    while not (last.is_dir() and checkpoint.verify(last) is None):
        if checkpoint.list_checkpoints(save):
            run_child("none", 0, ["train", "--resume", str(save)])
            resumes += 1
        else:  # killed before the first checkpoint: start again
            shutil.rmtree(save, ignore_errors=True)
            metrics.unlink(missing_ok=True)
            run_child("none", 0, argv)
    step, loss = final_loss(metrics)
    assert step == TOTAL_STEPS
    return {
        "phase": phase,
        "kill_at": kill_at,
        "killed": code == -signal.SIGKILL,
        "resumes": resumes,
        "loss": loss,
    }


RESULTS = ROOT / "benchmarks" / "results" / "faults.json"


def summarise(results: list[dict], expected: float, started: float, planned: int) -> dict:
    return {
        "benchmark": "faults",
        "recorded": {
            "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
                "note": "shared machine (other agents running); timings are not the point here",
            },
        },
        "total_steps": TOTAL_STEPS,
        "expected_final_loss": expected,
        "planned_trials": planned,
        "trials": len(results),
        "killed": sum(r["killed"] for r in results),
        "exact": sum(r["exact"] for r in results),
        "by_phase": {
            phase: {
                "trials": sum(r["phase"] == phase for r in results),
                "killed": sum(r["killed"] for r in results if r["phase"] == phase),
                "exact": sum(r["exact"] for r in results if r["phase"] == phase),
            }
            for phase in PHASES
        },
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "KILL_AT"))
    parser.add_argument("argv", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.argv)
        return
    rng = random.Random(args.seed)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="psyche-faults-") as tmp:
        reference = Path(tmp) / "reference"
        run_child(
            "none",
            0,
            [
                "train",
                *RUN_FLAGS,
                "--save-path",
                str(reference / "run"),
                "--metrics",
                str(reference / "metrics.jsonl"),
            ],
        )
        _, expected = final_loss(reference / "metrics.jsonl")
        results: list[dict] = []
        for i in range(args.trials):
            folder = Path(tmp) / f"trial-{i:03d}"
            folder.mkdir()
            outcome = trial(folder, PHASES[i % len(PHASES)], rng)
            outcome["exact"] = outcome["loss"] == expected
            results.append(outcome)
            print(json.dumps({"trial": i, **outcome}), file=sys.stderr, flush=True)
            shutil.rmtree(folder)
            summary = summarise(results, expected, started, args.trials)
            # Written after every trial, so an interrupted benchmark still says what it saw.
            RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    if summary["exact"] != summary["trials"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
