"""Training-step benchmark: psyche's DeepSeek-V3 against transformers', same weights, CPU fp32.

One step is forward with labels + backward + ``torch.optim.AdamW`` step (+ psyche's
``step_end``, as its trainer calls it); psyche computes the loss with ``return_logits=False``, as
its trainer does. Each side runs in its own child process so that its peak
memory can be measured alone: peak RSS (``VmHWM``, reset after setup through
``/proc/self/clear_refs`` where allowed) above the RSS after setup (model, optimizer and data
built; optimizer state and gradients are allocated inside the timed region, as in training).
Sides alternate over ``--rounds`` rounds to even out drifting machine load; step times are
medians over all timed steps. Prints one JSON object (``--save`` also writes it to
results/deepseek_train_step.json)::

    python benchmarks/deepseek_train_step.py --steps 5 --rounds 4 --save
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

CONFIG: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 768,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    if args.side == "psyche":
        from psyche_core.comm import LocalGroup
        from psyche_deepseek.model import DeepseekV3ForCausalLM

        model = DeepseekV3ForCausalLM.from_pretrained(args.checkpoint)
        model.set_attn_implementation("sdpa")
        comm = LocalGroup(1).communicator(0)

        def loss_of(ids):
            return model(ids, labels=ids, return_logits=False).loss

        def after_step():
            model.step_end(comm)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            args.checkpoint, dtype=torch.float32, attn_implementation="sdpa"
        )

        def loss_of(ids):
            return model(ids, labels=ids).loss

        def after_step():
            pass

    model.train()
    implementation = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        **implementation[args.adamw],
    )
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, CONFIG["vocab_size"], (args.batch, args.seq), generator=generator)
        for _ in range(4)
    ]
    gc.collect()
    reset = _reset_peak()
    baseline = _status_kib("VmRSS")

    losses, wall, cpu = [], [], []
    for step in range(args.warmup + args.steps):
        ids = batches[step % len(batches)]
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        loss = loss_of(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        after_step()
        elapsed_wall, elapsed_cpu = (
            time.perf_counter() - start_wall,
            time.process_time() - start_cpu,
        )
        losses.append(float(loss))
        if step >= args.warmup:
            wall.append(elapsed_wall)
            cpu.append(elapsed_cpu)
    peak = _status_kib("VmHWM")
    return {
        "first_loss": losses[0],
        "step_wall_s": wall,
        "step_cpu_s": cpu,
        "peak_rss_above_setup_mib": (peak - baseline) / 1024,
        "peak_reset_after_setup": reset,
    }


def run_side(side: str, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", side, "--checkpoint", str(checkpoint),
        "--batch", str(args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup),
        "--steps", str(args.steps), "--threads", str(args.threads), "--adamw", args.adamw,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    wall = [t for run in runs for t in run["step_wall_s"]]
    cpu = [t for run in runs for t in run["step_cpu_s"]]
    median = statistics.median(wall)
    return {
        "tokens_per_s": tokens / median,
        "step_s_median": median,
        "step_s_min": min(wall),
        "step_cpu_s_median": statistics.median(cpu),
        "step_s_median_per_round": [statistics.median(run["step_wall_s"]) for run in runs],
        "peak_mem_mib": max(run["peak_rss_above_setup_mib"] for run in runs),
        "peak_reset_after_setup": all(run["peak_reset_after_setup"] for run in runs),
        "first_loss": runs[0]["first_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per child process")
    parser.add_argument("--rounds", type=int, default=4, help="alternating runs of each side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="torch.optim.AdamW implementation, the same for both sides (default: torch's "
        "choice, a per-tensor loop on CPU; psyche's trainer uses foreach)",
    )
    parser.add_argument("--child", choices=["psyche", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        print(json.dumps(child(args)))
        return

    import torch

    from psyche_deepseek.model import DeepseekV3ForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "deepseek-v3-bench"
        model = DeepseekV3ForCausalLM.from_config(CONFIG, seed=0)
        with torch.no_grad():  # a trained-looking router: a non-zero correction bias
            for _, router in model.moe_routers():
                router.e_score_correction_bias.normal_(0, 0.01)
        model.save_pretrained(checkpoint)
        parameters = model.num_parameters()
        del model
        runs: dict[str, list[dict[str, Any]]] = {"transformers": [], "psyche": []}
        for _ in range(args.rounds):
            for side in runs:
                runs[side].append(run_side(side, checkpoint, args))

    tokens = args.batch * args.seq
    theirs, ours = summarise(runs["transformers"], tokens), summarise(runs["psyche"], tokens)
    result = {
        "benchmark": "deepseek_v3 training step (forward + backward + AdamW), CPU float32",
        "config": CONFIG,
        "parameters": parameters,
        "batch": args.batch,
        "sequence_length": args.seq,
        "threads": args.threads,
        "adamw": args.adamw,
        "warmup_steps": args.warmup,
        "timed_steps_per_round": args.steps,
        "rounds": args.rounds,
        "psyche": ours,
        "transformers": theirs,
        "speedup": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "best_step_speedup": theirs["step_s_min"] / ours["step_s_min"],
        "cpu_time_speedup": theirs["step_cpu_s_median"] / ours["step_cpu_s_median"],
        "peak_mem_ratio": ours["peak_mem_mib"] / theirs["peak_mem_mib"],
        "first_loss_diff": abs(ours["first_loss"] - theirs["first_loss"]),
        "target_speedup": 1.2,
    }
    result["target_met"] = result["speedup"] >= result["target_speedup"]
    _record.emit(result, args.save, "deepseek_train_step")


if __name__ == "__main__":
    main()
