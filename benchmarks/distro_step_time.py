"""Optimizer step time: DisTrO (``prepare_step`` + ``step``) vs torch's fused AdamW, same params.

Parameters have the shapes of psyche-llama's presets (``llama:20m``, ``llama:tiny``; for 20m a
module of the same shapes is built here when psyche-llama is not installed) with random
gradients; one peer (the in-process communicator with one rank). The DisTrO time includes
``prepare_step`` (psyche mode's lookahead), so it is what a training step pays. AdamW is
``torch.optim.AdamW(fused=True)``, the AdamW psyche uses.

Every configuration (model, threads, mode, 1-bit, top-k, bf16 selection) alternates AdamW
and DisTrO steps round by round, so both see the same load on a shared machine; the ratio is
the median over rounds of (DisTrO / AdamW). Prints one JSON object; ``--save`` also writes it
to ``benchmarks/results/<--name>.json``. ``--profile`` adds a torch.profiler breakdown of one
configuration's steps.

    python benchmarks/distro_step_time.py --threads 1 2 --profile --save
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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
TOPK_SWEEP = (4, 16, 64, 256, 1024, 4096)  # 4096 = the whole 64 x 64 chunk


def llama_preset(preset: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """A psyche-llama preset if it is installed, else (20m only) a module of the same shapes."""
    try:
        from psyche_core.plugins import Plugins

        spec = Plugins.load().models.get("llama")
        model = spec.load().from_config(spec.presets[preset], dtype=dtype)
        return model, f"psyche_llama {preset} preset"
    except Exception:  # not installed (or not yet the expected API): same shapes by hand
        if preset != "20m":
            raise
    return llama_20m_shapes(dtype), "parameters with the 20m preset's shapes"


def llama_20m(dtype: torch.dtype) -> tuple[nn.Module, str]:
    """The 20m preset (used by distro_bytes.py and dp_peers.py too)."""
    return llama_preset("20m", dtype)


def llama_20m_shapes(dtype: torch.dtype) -> nn.Module:
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
    return model


def configurations(models: list[str], topks: list[int]) -> list[dict]:
    """Both modes and 1-bit on every model, bf16 selection and the top-k sweep on 20m."""
    out = []
    for model in models:
        out += [
            {"model": model, "mode": "psyche", "one_bit": False, "topk": 4},
            {"model": model, "mode": "sync", "one_bit": False, "topk": 4},
            {"model": model, "mode": "psyche", "one_bit": True, "topk": 4},
        ]
    if "20m" in models:
        out.append({"model": "20m", "mode": "psyche", "one_bit": False, "topk": 4, "bf16": True})
        out += [
            {"model": "20m", "mode": "psyche", "one_bit": False, "topk": k} for k in topks if k != 4
        ]
    return out


def time_configuration(
    config: dict, model: nn.Module, threads: int, steps: int, warmup: int
) -> dict:
    torch.set_num_threads(threads)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(p.dtype)
    hyper = {"lr": 4e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
    adamw = torch.optim.AdamW(params, fused=True, **hyper)
    distro = DistroOptimizer(
        model,
        chunk=64,
        topk=config["topk"],
        decay=0.999,
        weight_decay=0.1,
        quantize_1bit=config["one_bit"],
        mode=config["mode"],
        bf16_select=config.get("bf16", False),
    )
    comm = LocalGroup(1).communicator(0)
    adamw_times, prepare_times, step_times = [], [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        adamw.step()
        adamw_time = time.perf_counter() - start
        ctx = StepContext(step=i + 1, lr=4e-4, prev_lr=4e-4, communicator=comm)
        start = time.perf_counter()
        distro.prepare_step(ctx)
        prepared = time.perf_counter()
        distro.step(ctx)
        end = time.perf_counter()
        if i >= warmup:
            adamw_times.append(adamw_time)
            prepare_times.append(prepared - start)
            step_times.append(end - start)
    ratios = [s / a for s, a in zip(step_times, adamw_times)]
    return {
        **config,
        "threads": threads,
        "parameters": sum(p.numel() for p in params),
        "payload_bytes": distro.payload_nbytes,
        "adamw_fused_step_s": round(statistics.median(adamw_times), 5),
        "distro_step_s": round(statistics.median(step_times), 5),
        "distro_prepare_step_s": round(statistics.median(prepare_times), 5),
        "ratio_vs_adamw_fused": round(statistics.median(ratios), 3),
    }


def profile_table(model: nn.Module, threads: int, rows: int = 18) -> tuple[str, dict[str, float]]:
    """torch.profiler's self-time table for three psyche-mode steps (20m, top-k 4), and each
    listed op's share of the self time in percent (numbers the docs can quote and check)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    distro = DistroOptimizer(model, chunk=64, topk=4, decay=0.999, weight_decay=0.1)
    comm = LocalGroup(1).communicator(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    for i in range(2):
        ctx = StepContext(step=i + 1, lr=4e-4, prev_lr=4e-4, communicator=comm)
        distro.prepare_step(ctx)
        distro.step(ctx)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            ctx = StepContext(step=i + 3, lr=4e-4, prev_lr=4e-4, communicator=comm)
            distro.prepare_step(ctx)
            distro.step(ctx)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    shares = {e.key: round(100 * e.self_cpu_time_total / total, 2) for e in top}
    return events.table(sort_by="self_cpu_time_total", row_limit=rows), shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["20m", "tiny"])
    parser.add_argument("--topk", type=int, nargs="+", default=list(TOPK_SWEEP))
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    parser.add_argument(
        "--name", default="distro_step_time", help="results file name for --save (no .json)"
    )
    _record.add_save_flag(parser)
    args = parser.parse_args()

    models = {name: llama_preset(name, torch.float32) for name in args.models}
    results = []
    for threads in args.threads:
        for config in configurations(args.models, args.topk):
            model, _ = models[config["model"]]
            results.append(time_configuration(config, model, threads, args.steps, args.warmup))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    def ratio(threads: int, **match) -> float | None:
        for r in results:
            if r["threads"] == threads and all(r.get(k, False) == v for k, v in match.items()):
                return r["ratio_vs_adamw_fused"]
        return None

    summary = {}
    for threads in args.threads:
        base = {"model": "20m", "one_bit": False, "topk": 4, "bf16": False}
        summary[f"{threads}_threads"] = {
            "psyche": ratio(threads, **base, mode="psyche"),
            "sync": ratio(threads, **base, mode="sync"),
            "psyche_1bit": ratio(threads, **{**base, "one_bit": True}, mode="psyche"),
            "psyche_bf16_select": ratio(threads, **{**base, "bf16": True}, mode="psyche"),
            "tiny_psyche": ratio(threads, **{**base, "model": "tiny"}, mode="psyche"),
        }
        # Each DisTrO time divided by the AdamW time measured in the same rounds, then one
        # configuration over the other: the load drifts between configurations, and dividing
        # by AdamW cancels most of that (raw step times taken minutes apart do not).
        full = [r for r in results if r["threads"] == threads and r["topk"] == max(args.topk)]
        top4 = ratio(threads, **base, mode="psyche")
        if full and top4:
            summary[f"{threads}_threads"]["full_chunk_step_vs_topk4_step"] = round(
                full[0]["ratio_vs_adamw_fused"] / top4, 2
            )
    report = {
        "benchmark": "distro_step_time",
        "sources": {name: source for name, (_, source) in models.items()},
        "target": "DisTrO step incl. prepare_step <= 2x fused AdamW (20m, top-k 4); "
        "full-chunk step <= 3x the top-k 4 step",
        "ratio_vs_adamw_fused": summary,
        "results": results,
    }
    if args.profile:
        report["profile"], report["profile_self_cpu_percent"] = profile_table(
            models[args.models[0]][0], args.threads[0]
        )
    _record.emit(report, args.save, args.name)


if __name__ == "__main__":
    main()
