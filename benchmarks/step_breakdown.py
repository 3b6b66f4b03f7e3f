"""Where a training step's time goes, psyche beside transformers + ``torch.compile``, and the
speed-up ceilings that follow from it.

The sides and the step are ``_train_step.py``'s (``--model llama``: ``llama:20m``; ``deepseek``:
the tiny DeepSeek-V3), 4 x 256 by default. Each round profiles one step of every side
(``torch.profiler``, CPU), the sides taking turns in one process; every op's self time goes to
one kind of work:

- ``matmul``: dense products (``mm``, ``bmm``, ``addmm``, ``_grouped_mm``, ...);
- ``attention``: torch's fused attention kernels (``scaled_dot_product_*``; the math form,
  as transformers runs DeepSeek's MLA, shows as ``bmm`` in ``matmul`` and softmax in ``other``);
- ``optimizer``: the fused AdamW kernel;
- ``other``: the rest of the step's wall time: elementwise work, casts, copies, softmax and
  reductions, compiled (inductor) kernels, Python and dispatch.

Model code and compilers remove ``other`` time; the three kernel kinds stay whichever framework
calls them (the same shapes, the same oneDNN kernels) unless it does less work. Hence two
ceilings per side, medians over rounds:

- ``speedup_ceiling``: wall / (matmul + attention + optimizer), what removing all ``other``
  time would give, the most ``--compile`` (or any fusion) can gain over this side;
- ``vs_BASE_ceiling``: BASE's wall / this side's kernel time, the most this side could reach
  against BASE with its kernels as they are;
- ``vs_BASE_now``: BASE's unprofiled step time / this side's (one step each per round, right
  after the profiled one: a rough check; the speed benchmarks' ``speed_ratios`` measure it).

The profiler costs a few microseconds per op, counted in ``other``, more for eager sides (many
small ops) than compiled ones; ``wall_ms_unprofiled`` is the same step timed without it.

    python benchmarks/step_breakdown.py --model llama --save
    python benchmarks/step_breakdown.py --model deepseek --save
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import _record
import _train_step

KINDS = ("matmul", "attention", "optimizer")
MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::mv", "aten::_grouped_mm"}
MATMUL_OPS |= {
    f"aten::{op}{inplace}"
    for op in ("addmm", "baddbmm", "addbmm", "addmv")
    for inplace in ("", "_")
}
OPTIMIZER_OPS = ("aten::_fused_adamw_", "aten::_fused_adam_")
DEFAULT_SIDES = "psyche,psyche-bf16-mixed,psyche-bf16-mixed-compile,hf-compile,hf-compile-bf16"
# (side, baseline) pairs whose ceiling is reported, when both sides ran
PAIRS = (
    ("psyche", "hf-compile"),
    ("psyche-compile", "hf-compile"),
    ("psyche-bf16-mixed", "hf-compile-bf16"),
    ("psyche-bf16-mixed-compile", "hf-compile-bf16"),
)


def kind_of(op: str) -> str | None:
    """The kind of work of a profiled op, or None for ``other``."""
    if op in MATMUL_OPS:
        return "matmul"
    if op.startswith("aten::_scaled_dot_product") or op.startswith("aten::_efficient_attention"):
        return "attention"
    if op in OPTIMIZER_OPS:
        return "optimizer"
    return None


def profiled_step(side: _train_step.Side, ids: Any) -> dict[str, float]:
    """One step under the profiler: wall and each kind's self time, in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        side.step(ids)
        wall = time.perf_counter() - start
    spent = dict.fromkeys(KINDS, 0.0)
    for event in prof.events():
        kind = kind_of(event.name)
        if kind is not None:
            spent[kind] += event.self_cpu_time_total / 1000
    return {"wall": wall * 1000, **spent}


def _model(name: str) -> _train_step.Bench:
    if name == "llama":
        import llama_train_step

        return llama_train_step.BENCH
    import deepseek_train_step

    return deepseek_train_step.BENCH


def _rounds(
    args: argparse.Namespace, sides: list[_train_step.Side]
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """Warmup, then per round one profiled and one plain step of every side, in rotating order."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    vocab = sides[0].model.config.vocab_size
    shape = (args.batch, args.seq_len)
    batches = [torch.randint(0, vocab, shape, generator=generator) for _ in range(2)]
    profiled: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
    plain: dict[str, list[float]] = {side.name: [] for side in sides}
    for round_ in range(args.warmup + args.rounds):
        ids = batches[round_ % len(batches)]
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if round_ < args.warmup:
                side.step(ids)
                continue
            profiled[side.name].append(profiled_step(side, ids))
            plain[side.name].append(side.step(ids) * 1000)
    return profiled, plain


def breakdown(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    bench = _model(args.model)
    with tempfile.TemporaryDirectory() as tmp:  # kept while the sides run
        checkpoint = os.path.join(tmp, "checkpoint")
        params = bench.make_checkpoint(checkpoint)
        sides = [_train_step.Side(name, checkpoint, bench) for name in args.sides.split(",")]
        host_before = _train_step.host_peak_tflops()
        profiled, plain = _rounds(args, sides)
        host = {"before": host_before, "after": _train_step.host_peak_tflops()}
    result = _train_step.run_header(bench, params, args)
    result["host_peak_tflops"] = host  # the machine's matmul speed around the rounds
    result["sides"] = {}
    for name, steps in profiled.items():
        median = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
        kernels = [sum(step[kind] for kind in KINDS) for step in steps]
        result["sides"][name] = {
            "wall_ms": round(median["wall"], 1),
            "wall_ms_unprofiled": round(statistics.median(plain[name]), 1),
            **{f"{kind}_ms": round(median[kind], 1) for kind in KINDS},
            "other_ms": round(statistics.median(s["wall"] - k for s, k in zip(steps, kernels)), 1),
            "speedup_ceiling": round(
                statistics.median(s["wall"] / k for s, k in zip(steps, kernels)), 3
            ),
        }
    for name, base in PAIRS:
        if name in profiled and base in profiled:
            ceiling = statistics.median(
                b["wall"] / sum(s[kind] for kind in KINDS)
                for s, b in zip(profiled[name], profiled[base])
            )
            result["sides"][name][f"vs_{base}_ceiling"] = round(ceiling, 3)
            result["sides"][name][f"vs_{base}_now"] = round(
                statistics.median(b / s for s, b in zip(plain[name], plain[base])), 3
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("llama", "deepseek"), default="llama")
    parser.add_argument("--sides", default=DEFAULT_SIDES, help="comma-separated, as _train_step")
    parser.add_argument("--rounds", type=int, default=8, help="profiled rounds")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled rounds first (compile)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    _record.emit(breakdown(args), args.save, f"step_breakdown_{args.model}")


if __name__ == "__main__":
    main()
