"""DeepSeek's routed experts on the CPU under ``bf16-mixed``: float32 (what psyche does) against
bfloat16 (what CUDA does), on the tiny DeepSeek-V3 of ``deepseek_train_step.py``.

Memory: each variant alone in a child process, resident set above the level after the first
step, sampled every few steps over ``--steps`` training steps with fresh random batches (so
the routed row counts change every step, as in training). Speed: both variants in one
process, taking turns step by step (``psyche_deepseek.moe.FLOAT32_EXPERTS`` is read at every
forward); ``bf16_vs_float32`` is the median over steps of the float32 step time / the bf16 one.

    python benchmarks/deepseek_expert_precision.py --save
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import _record

VARIANTS = {"float32": {"cpu"}, "bf16": set()}  # FLOAT32_EXPERTS for each


def _rss_mib() -> float:
    import _train_step

    return _train_step.status_kib("VmRSS") / 1024


def _side(checkpoint: str):
    import _train_step
    import deepseek_train_step

    return _train_step.Side("psyche-bf16-mixed", checkpoint, deepseek_train_step.BENCH)


def _batches(steps: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 4096, (4, 256), generator=generator) for _ in range(steps)]


def memory(args: argparse.Namespace) -> dict:
    """One variant alone: resident memory above its level after the first step."""
    import torch

    from psyche_deepseek import moe

    torch.set_num_threads(args.threads)
    moe.FLOAT32_EXPERTS = VARIANTS[args.variant]
    side = _side(args.checkpoint)
    batches = _batches(args.steps + 1)
    side.step(batches[0])
    base = _rss_mib()
    growth = {}
    for step, ids in enumerate(batches[1:], 1):
        side.step(ids)
        if step % 5 == 0 or step == args.steps:
            growth[step] = round(_rss_mib() - base, 1)
    return growth


def timing(args: argparse.Namespace) -> dict:
    """Both variants in one process, a step each in turn."""
    import torch

    from psyche_deepseek import moe

    torch.set_num_threads(args.threads)
    sides = {name: _side(args.checkpoint) for name in VARIANTS}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for step, ids in enumerate(_batches(args.warmup + args.rounds)):
        for name, side in sides.items():
            moe.FLOAT32_EXPERTS = VARIANTS[name]
            elapsed = side.step(ids)
            if step >= args.warmup:
                times[name].append(elapsed)
    ratios = [f / b for f, b in zip(times["float32"], times["bf16"])]
    return {
        "median_step_ms": {n: round(statistics.median(t) * 1000, 1) for n, t in times.items()},
        "bf16_vs_float32": round(statistics.median(ratios), 3),
    }


def _child(args: argparse.Namespace, *extra: str) -> dict:
    command = [sys.executable, sys.argv[0], "--checkpoint", args.checkpoint, *extra]
    for flag in ("steps", "rounds", "warmup", "threads"):
        command += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {extra} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="internal: memory child")
    parser.add_argument("--timing", action="store_true", help="internal: the timing child")
    parser.add_argument("--checkpoint", help="internal: the checkpoint both variants load")
    parser.add_argument("--steps", type=int, default=40, help="steps per memory child")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(memory(args)))
        return
    if args.timing:
        print(json.dumps(timing(args)))
        return

    import deepseek_train_step

    with tempfile.TemporaryDirectory() as tmp:
        args.checkpoint = os.path.join(tmp, "checkpoint")
        deepseek_train_step.make_checkpoint(args.checkpoint)
        growth = {name: _child(args, "--variant", name) for name in VARIANTS}
        speed = _child(args, "--timing")
    result = {
        "model": "deepseek_v3 (tiny), bf16-mixed, batch 4 x 256",
        "threads": args.threads,
        "rss_growth_mib": growth,  # variant -> {step: MiB above the level after step 0}
        **speed,
    }
    _record.emit(result, args.save, "deepseek_expert_precision")


if __name__ == "__main__":
    main()
