"""Training-step benchmark: psyche-llama versus transformers' LlamaForCausalLM on CPU.

One step is forward + backward + a torch AdamW step (foreach, as psyche's AdamW), in float32, on
the ``20m`` preset with a batch of 4 x 256 tokens; both models load one checkpoint, so they hold
the same weights. psyche is called as its trainer calls it,
``model(ids, labels=ids, return_logits=False)``; transformers as ``model(input_ids=ids,
labels=ids)``, both with sdpa attention.

- Speed: one child process holds both models and alternates their steps (ABBA order), so a busy
  shared machine slows both alike; tokens/s come from each side's median step time and the
  speedup is the median of the per-pair time ratios.
- Memory: each side runs alone in its own child; its peak is the peak resident set (``VmHWM``,
  reset after setup through ``/proc/self/clear_refs``) above the resident set once the model,
  data and optimizer exist (optimizer state appears at the first step, so it counts).

    python benchmarks/llama_train_step.py              # prints one JSON object
    python benchmarks/llama_train_step.py --pairs 30 --threads 2
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
from pathlib import Path
from typing import Any

import _record

PRESET = "20m"
SIDES = ("psyche", "transformers")


def _status_kib(field: str) -> int:
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


class Side:
    """One model with its optimizer and the way its trainer calls it."""

    def __init__(self, name: str, checkpoint: str) -> None:
        import torch

        self.name = name
        if name == "psyche":
            from psyche_llama.model import LlamaForCausalLM

            self.model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
            self.model.set_attn_implementation("sdpa")
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint, dtype=torch.float32, attn_implementation="sdpa"
            )
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True
        )
        self.losses: list[float] = []

    def step(self, ids: Any) -> float:
        """One training step; returns its wall time in seconds."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if self.name == "psyche":
            loss = self.model(ids, labels=ids, return_logits=False).loss
        else:
            loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        self.losses.append(loss.item())
        return elapsed


def _batches(args: argparse.Namespace, vocab: int) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(1234)
    shape = (args.batch, args.seq_len)
    return [torch.randint(0, vocab, shape, generator=generator) for _ in range(4)]


def time_both(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate psyche and transformers steps in one process (ABBA) and time each."""
    import torch

    torch.set_num_threads(args.threads)
    sides = [Side(name, args.checkpoint) for name in SIDES]
    batches = _batches(args, sides[0].model.config.vocab_size)
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    for pair in range(args.warmup + args.pairs):
        ids = batches[pair % len(batches)]
        for side in sides if pair % 2 == 0 else sides[::-1]:
            elapsed = side.step(ids)
            if pair >= args.warmup:
                times[side.name].append(elapsed)
    ratios = [t / p for p, t in zip(times["psyche"], times["transformers"])]
    return {
        "times": times,
        "speedup": statistics.median(ratios),
        "losses": {side.name: side.losses for side in sides},
    }


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """One side alone: peak resident memory of training steps above the post-setup level."""
    import torch

    torch.set_num_threads(args.threads)
    side = Side(args.side, args.checkpoint)
    batches = _batches(args, side.model.config.vocab_size)
    exact = _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    times = [side.step(batches[i % len(batches)]) for i in range(args.memory_steps)]
    return {
        "peak_mib": (_status_kib("VmHWM") - baseline) / 1024,
        "peak_exact": exact,
        "step_s": statistics.median(times[1:]),
    }


def make_checkpoint(directory: str) -> int:
    from psyche_llama.model import LlamaForCausalLM
    from psyche_llama.presets import PRESETS

    model = LlamaForCausalLM.from_config(PRESETS[PRESET], seed=0)
    model.save_pretrained(directory)
    return model.num_parameters()


def _child(args: argparse.Namespace, checkpoint: str, *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--checkpoint", checkpoint, *extra]
    for flag in ("warmup", "pairs", "batch", "seq-len", "threads", "memory-steps"):
        command += [f"--{flag}", str(getattr(args, flag.replace("-", "_")))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=(*SIDES, "both"), help="internal: run one child")
    parser.add_argument("--checkpoint", help="internal: the checkpoint both sides load")
    parser.add_argument("--pairs", type=int, default=20, help="timed step pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed step pairs first")
    parser.add_argument("--memory-steps", type=int, default=4, help="steps per memory child")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    if args.side == "both":
        print(json.dumps(time_both(args)))
        return
    if args.side:
        print(json.dumps(measure_memory(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "llama-20m")
        params = make_checkpoint(checkpoint)
        timing = _child(args, checkpoint, "--side", "both")
        memory = {name: _child(args, checkpoint, "--side", name) for name in SIDES}

    tokens = args.batch * args.seq_len
    summary: dict[str, Any] = {
        "preset": PRESET,
        "parameters": params,
        "batch": [args.batch, args.seq_len],
        "threads": args.threads,
        "timed_pairs": args.pairs,
    }
    for name in SIDES:
        times = timing["times"][name]
        losses = timing["losses"][name]
        summary[name] = {
            "tokens_per_s": round(tokens / statistics.median(times), 1),
            "median_step_ms": round(statistics.median(times) * 1000, 1),
            "min_step_ms": round(min(times) * 1000, 1),
            "peak_mib": round(memory[name]["peak_mib"], 1),
            "peak_exact": memory[name]["peak_exact"],
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        }
    summary["speedup"] = round(timing["speedup"], 3)
    summary["tokens_per_s_ratio"] = round(
        summary["psyche"]["tokens_per_s"] / summary["transformers"]["tokens_per_s"], 3
    )
    summary["memory_ratio"] = round(
        summary["psyche"]["peak_mib"] / summary["transformers"]["peak_mib"], 3
    )
    _record.emit(summary, args.save, "llama_train_step")


if __name__ == "__main__":
    main()
