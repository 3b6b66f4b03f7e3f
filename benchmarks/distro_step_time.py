"""Optimizer step time: DisTrO (generate + exchange + apply) vs torch AdamW, same parameters.

Parameters have the ~20M Llama preset's shapes (psyche-llama's ``20m`` preset when installed,
else the same shapes built here) with random gradients; one peer (the exchange is the in-process
communicator with one rank). Prints one JSON object: median seconds per step over ``--steps``
timed steps after ``--warmup`` untimed ones (AdamW and DisTrO steps alternate), and the ratio
to AdamW.

    python benchmarks/distro_step_time.py [--threads 1] [--steps 7] [--mode psyche|sync]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _record
import torch
from torch import nn

from psyche_core.comm import LocalGroup
from psyche_core.optim import StepContext
from psyche_distro.optimizer import DistroOptimizer

# hidden 256, intermediate 768, 4 layers, vocab 32000, untied embeddings (design 3.3).
LLAMA_20M = {
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
}


def llama_20m(dtype: torch.dtype) -> tuple[nn.Module, str]:
    """The 20m preset from psyche-llama if it is installed, else a module of the same shapes."""
    try:
        from psyche_core.plugins import Plugins

        spec = Plugins.load().models.get("llama")
        model = spec.load().from_config(spec.presets["20m"], dtype=dtype)
        return model, "psyche_llama 20m preset"
    except Exception:  # not installed (or not yet the expected API): same shapes by hand
        pass
    v, h, i, n = (LLAMA_20M[k] for k in LLAMA_20M)
    g = torch.Generator().manual_seed(0)

    def param(*shape: int) -> nn.Parameter:
        return nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(dtype))

    model = nn.Module()
    model.embed_tokens = param(v, h)
    for layer in range(n):
        block = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(block, name, param(h, h))
        block.gate_proj, block.up_proj, block.down_proj = param(i, h), param(i, h), param(h, i)
        block.input_layernorm = nn.Parameter(torch.ones(h, dtype=dtype))
        block.post_attention_layernorm = nn.Parameter(torch.ones(h, dtype=dtype))
        setattr(model, f"layer{layer}", block)
    model.norm = nn.Parameter(torch.ones(h, dtype=dtype))
    model.lm_head = param(v, h)
    return model, "parameters with the 20m preset's shapes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mode", choices=("psyche", "sync"), default="psyche")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--topk", type=int, default=4)
    parser.add_argument("--one-bit", action="store_true")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    _record.add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    model, source = llama_20m(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g).to(dtype) * 1e-3 for p in params]

    def set_grads() -> None:
        for p, grad in zip(params, grads):
            p.grad = grad.clone()

    set_grads()
    hyper = {"lr": 4e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
    # foreach is torch's default on CPU; fused is what psyche's AdamW uses (3-4x faster).
    adamw = torch.optim.AdamW(params, foreach=True, **hyper)
    adamw_fused = torch.optim.AdamW(params, fused=True, **hyper)
    distro = DistroOptimizer(
        model,
        chunk=args.chunk,
        topk=args.topk,
        decay=0.999,
        weight_decay=0.1,
        quantize_1bit=args.one_bit,
        mode=args.mode,
    )
    comm = LocalGroup(1).communicator(0)
    # AdamW and DisTrO steps alternate, so both see the same load on a shared machine.
    adamw_times, fused_times, prepare_times, step_times = [], [], [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        adamw.step()
        adamw_time = time.perf_counter() - start
        start = time.perf_counter()
        adamw_fused.step()
        fused_time = time.perf_counter() - start
        ctx = StepContext(step=i + 1, lr=4e-4, prev_lr=4e-4, communicator=comm)
        start = time.perf_counter()
        distro.prepare_step(ctx)
        prepare_time = time.perf_counter() - start
        start = time.perf_counter()
        distro.step(ctx)
        step_time = time.perf_counter() - start
        if i >= args.warmup:
            adamw_times.append(adamw_time)
            fused_times.append(fused_time)
            prepare_times.append(prepare_time)
            step_times.append(step_time)
    step = statistics.median(step_times)
    prepare = statistics.median(prepare_times)
    adamw_median = statistics.median(adamw_times)
    fused_median = statistics.median(fused_times)
    ratios = sorted(s / a for s, a in zip(step_times, adamw_times))
    _record.emit(
        {
            "benchmark": "distro_step_time",
            "parameters": sum(p.numel() for p in params),
            "source": source,
            "dtype": args.dtype,
            "threads": args.threads,
            "mode": args.mode,
            "chunk": args.chunk,
            "topk": args.topk,
            "one_bit": args.one_bit,
            "steps_timed": args.steps,
            "adamw_step_s": round(adamw_median, 5),
            "distro_step_s": round(step, 5),
            "distro_prepare_step_s": round(prepare, 5),
            "ratio_step_vs_adamw": round(step / adamw_median, 3),
            "ratio_step_vs_adamw_per_round_median": round(statistics.median(ratios), 3),
            "ratio_prepare_plus_step_vs_adamw": round((step + prepare) / adamw_median, 3),
            "adamw_fused_step_s": round(fused_median, 5),
            "ratio_step_vs_adamw_fused": round(step / fused_median, 3),
            "ratio_prepare_plus_step_vs_adamw_fused": round((step + prepare) / fused_median, 3),
            "target_ratio": 2.0,
        },
        args.save,
        "distro_step_time" if args.threads == 1 else f"distro_step_time_{args.threads}threads",
    )


if __name__ == "__main__":
    main()
