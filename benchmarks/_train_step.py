"""The training-step benchmark shared by ``llama_train_step.py`` and ``deepseek_train_step.py``:
psyche against the strongest plain-PyTorch baselines a user would pick, on one checkpoint.

One step is forward + backward + a fused torch AdamW step (+ the model's ``step_end``, as
psyche's trainer calls it). Sides:

- ``psyche``: psyche's trainer path, ``model(ids, labels=ids, return_logits=False)``, float32
  (``--precision 32-true``);
- ``psyche-bf16-mixed``: the same under ``torch.autocast`` bfloat16 (``--precision bf16-mixed``);
- ``psyche-compile``: float32 with ``--compile`` (every decoder layer and the chunked loss);
- ``psyche-bf16-mixed-compile``: both;
- ``psyche-logits``: float32 with the full ``(B, T, vocab)`` logits materialised;
- ``hf``: transformers' model as it comes (eager), float32;
- ``hf-compile``: transformers' model, ``torch.compile``d whole, float32;
- ``hf-compile-bf16``: the same under ``torch.autocast`` bfloat16;
- ``psyche-ckpt-full`` / ``psyche-ckpt-selective``: ``--activation-checkpointing`` (memory).

Speed: one child process holds the timed sides and runs them round after round, rotating the
order each round, so a busy shared machine slows all alike; ``speed_ratios.SIDE_vs_BASE`` is the
median over rounds of BASE's step time / SIDE's in that round. Compile time (dynamo's own
accounting) is reported separately. ``host_peak_tflops`` is the machine's matmul TFLOP/s per
dtype (``psyche bench peak``'s measurement) just before and just after the rounds: on a shared
host it says how fast the machine ran while they were timed.
Memory: each side alone in a child; peak resident set (``VmHWM``, reset after setup) above the
resident set once model, data and optimizer exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _record

SIDES = (
    "psyche",
    "psyche-bf16-mixed",
    "psyche-compile",
    "psyche-bf16-mixed-compile",
    "psyche-logits",
    "hf",
    "hf-compile",
    "hf-compile-bf16",
    "psyche-ckpt-full",
    "psyche-ckpt-selective",
)
# (side, baseline) pairs whose speed ratio the summary reports
RATIOS = (
    ("psyche", "hf-compile"),
    ("psyche-bf16-mixed", "hf-compile-bf16"),
    ("psyche-bf16-mixed", "psyche"),
    ("psyche-compile", "psyche"),
    ("psyche-bf16-mixed-compile", "psyche-bf16-mixed"),
    ("psyche-compile", "hf-compile"),
    ("psyche-bf16-mixed-compile", "hf-compile-bf16"),
    ("psyche", "psyche-logits"),
    ("psyche", "hf"),
    ("hf-compile", "hf"),
)


@dataclass(frozen=True)
class Bench:
    """What differs between the models: how to write the checkpoint every side loads, and how
    psyche loads it."""

    model: str  # what the results call it, e.g. "llama:20m"
    make_checkpoint: Callable[[str], int]  # directory -> parameter count
    load_psyche: Callable[[str], Any]  # checkpoint -> psyche CausalLM, float32
    name: str  # results/NAME.json for --save
    doc: str


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _compile_seconds() -> float:
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent().get("total_wall_time", 0.0))


class Side:
    """One model with its optimizer and the way its trainer calls it."""

    def __init__(self, name: str, checkpoint: str, bench: Bench) -> None:
        import torch

        self.name = name
        self.autocast = "bf16" in name
        self.psyche = name.startswith("psyche")
        self.communicator = None
        if self.psyche:
            from psyche_core.comm import LocalGroup
            from psyche_core.compiling import compile_regions

            self.model = bench.load_psyche(checkpoint)
            self.model.set_attn_implementation("sdpa")
            if name.startswith("psyche-ckpt-"):
                self.model.set_activation_checkpointing(name.removeprefix("psyche-ckpt-"))
            if name.endswith("-compile"):
                compile_regions(self.model)
            self.forward = self.model
            self.communicator = LocalGroup(1).communicator(0)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint, dtype=torch.float32, attn_implementation="sdpa"
            )
            compiled = name.startswith("hf-compile")
            self.forward = torch.compile(self.model) if compiled else self.model
        self.model.train()
        # psyche's AdamW is torch's fused one; the baselines get the same
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True
        )
        self.losses: list[float] = []

    def step(self, ids: Any) -> float:
        """One training step; returns its wall time in seconds."""
        import torch

        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            if self.psyche:
                full_logits = self.name == "psyche-logits"
                out = self.forward(ids, labels=ids, return_logits=full_logits)
            else:
                out = self.forward(input_ids=ids, labels=ids)
        out.loss.backward()
        self.optimizer.step()
        if self.communicator is not None:  # psyche's trainer ends each step with this
            self.model.step_end(self.communicator)
        elapsed = time.perf_counter() - start
        self.losses.append(out.loss.item())
        return elapsed


def run_header(bench: Bench, params: int, args: argparse.Namespace) -> dict[str, Any]:
    """What a result measured: model, size, batch, threads and rounds."""
    return {
        "model": bench.model,
        "parameters": params,
        "batch": [args.batch, args.seq_len],
        "threads": args.threads,
        "timed_rounds": args.rounds,
        "warmup_rounds": args.warmup,
    }


def host_peak_tflops() -> dict[str, float]:
    """This machine's matmul TFLOP/s per dtype right now (``psyche bench peak``'s measurement,
    not cached): how fast the shared host ran while the rounds were timed."""
    from psyche_core.flops import bench_cpu_peaks

    return {dtype: round(flops / 1e12, 3) for dtype, flops in bench_cpu_peaks(cache=False).items()}


def _batches(args: argparse.Namespace, vocab: int) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(1234)
    shape = (args.batch, args.seq_len)
    return [torch.randint(0, vocab, shape, generator=generator) for _ in range(4)]


def time_sides(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Every side in one process, rounds in rotating order; compile time kept apart."""
    import torch

    torch.set_num_threads(args.threads)
    names = args.sides.split(",")
    sides = [Side(name, args.checkpoint, bench) for name in names]
    host_before = host_peak_tflops()
    batches = _batches(args, sides[0].model.config.vocab_size)
    times: dict[str, list[float]] = {name: [] for name in names}
    warmup_s: dict[str, float] = {name: 0.0 for name in names}
    compile_s: dict[str, float] = {name: 0.0 for name in names}
    for round_ in range(args.warmup + args.rounds):
        ids = batches[round_ % len(batches)]
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            compiled_before = _compile_seconds()
            elapsed = side.step(ids)
            if round_ >= args.warmup:
                times[side.name].append(elapsed)
            else:
                warmup_s[side.name] += elapsed
                compile_s[side.name] += _compile_seconds() - compiled_before
    ratios = {}
    for side, base in RATIOS:
        if side in times and base in times:
            per_round = [b / s for s, b in zip(times[side], times[base])]
            ratios[f"{side}_vs_{base}"] = round(statistics.median(per_round), 3)
    return {
        "times": times,
        "ratios": ratios,
        "host_peak_tflops": {"before": host_before, "after": host_peak_tflops()},
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "losses": {side.name: side.losses for side in sides},
    }


def measure_memory(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """One side alone: peak resident memory of training steps above the post-setup level."""
    import torch

    torch.set_num_threads(args.threads)
    side = Side(args.side, args.checkpoint, bench)
    batches = _batches(args, side.model.config.vocab_size)
    exact = _reset_peak_rss()
    baseline = status_kib("VmRSS")
    times = [side.step(batches[i % len(batches)]) for i in range(args.memory_steps)]
    return {
        "peak_mib": round((status_kib("VmHWM") - baseline) / 1024, 1),
        "peak_exact": exact,
        "step_s": round(statistics.median(times[1:] or times), 3),
        "losses": [round(x, 5) for x in side.losses],
    }


def _child(args: argparse.Namespace, checkpoint: str, *extra: str) -> dict[str, Any]:
    command = [sys.executable, sys.argv[0], "--checkpoint", checkpoint, *extra]
    for flag in ("warmup", "rounds", "batch", "seq-len", "threads", "memory-steps", "sides"):
        command += [f"--{flag}", str(getattr(args, flag.replace("-", "_")))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {extra} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(bench: Bench) -> None:
    parser = argparse.ArgumentParser(description=bench.doc.splitlines()[0])
    parser.add_argument("--side", help="internal: measure one side's memory in a child")
    parser.add_argument("--timing", action="store_true", help="internal: the timing child")
    parser.add_argument("--checkpoint", help="internal: the checkpoint every side loads")
    default_timed = ",".join(s for s in SIDES if "ckpt" not in s)
    parser.add_argument("--sides", default=default_timed, help="timed sides, comma-separated")
    parser.add_argument(
        "--memory",
        default="psyche,psyche-bf16-mixed,psyche-logits,hf-compile,hf-compile-bf16",
        help="sides whose peak memory is measured, each alone (empty: none)",
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compile)")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory child")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    _record.add_save_flag(parser)
    parser.add_argument("--name", default=bench.name, help="results/NAME.json for --save")
    args = parser.parse_args()
    if args.timing:
        print(json.dumps(time_sides(args, bench)))
        return
    if args.side:
        print(json.dumps(measure_memory(args, bench)))
        return

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "checkpoint")
        params = bench.make_checkpoint(checkpoint)
        timing = _child(args, checkpoint, "--timing") if args.sides else None
        memory = {
            name: _child(args, checkpoint, "--side", name)
            for name in filter(None, args.memory.split(","))
        }

    tokens = args.batch * args.seq_len
    summary = run_header(bench, params, args)
    if timing is not None:
        for name, times in timing["times"].items():
            losses = timing["losses"][name]
            summary[name] = {
                "tokens_per_s": round(tokens / statistics.median(times), 1),
                "median_step_ms": round(statistics.median(times) * 1000, 1),
                "min_step_ms": round(min(times) * 1000, 1),
                "compile_s": round(timing["compile_s"][name], 1),
                "warmup_s": round(timing["warmup_s"][name], 1),
                "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            }
        summary["speed_ratios"] = timing["ratios"]
        summary["host_peak_tflops"] = timing["host_peak_tflops"]
    summary["memory"] = memory
    summary["wall_s"] = round(time.time() - started, 1)
    _record.emit(summary, args.save, args.name)
