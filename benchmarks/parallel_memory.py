"""Per-rank training-state memory under each parallel layout, against the ideal 1/N split.

For ``llama:20m`` with AdamW, each layout runs one real training step (forward, backward,
optimizer step) in gloo worker processes, and every rank reports the bytes it holds of

- parameters (its local shards),
- gradients (its local shards, after the step's reduction),
- optimizer state (AdamW's two moments and step counters, local shards).

The ideal is the unsharded total divided by the number of ranks sharing it (D with ``--fsdp``,
T with tensor parallelism); plain replicas (``--data-parallelism`` without ``--fsdp``) hold
everything, so their ideal is the total. Layouts: ``D=1``, ``D=2 --fsdp``, ``T=2``,
``D=2 --fsdp x T=2``.

    python benchmarks/parallel_memory.py --save
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import _record
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = {  # name: (flags, layout)
    "d1": ("D=1", {"replicas": 1, "tensor": 1, "fsdp": False}),
    "d2_fsdp": ("D=2 --fsdp", {"replicas": 2, "tensor": 1, "fsdp": True}),
    "t2": ("T=2", {"replicas": 1, "tensor": 2, "fsdp": False}),
    "d2_fsdp_t2": ("D=2 --fsdp x T=2", {"replicas": 2, "tensor": 2, "fsdp": True}),
}


def one_rank(comm: Any, payload: dict[str, Any]) -> dict[str, int]:
    """A worker: build, shard, take one AdamW step, count what this rank holds."""
    from psyche_core import parallel
    from psyche_core.adamw import AdamW
    from psyche_core.layout import Layout
    from psyche_core.optim import StepContext
    from psyche_core.topology import process_topology
    from psyche_llama.model import LlamaForCausalLM
    from psyche_llama.presets import PRESETS

    layout = Layout(**payload["layout"])
    topology = process_topology(layout, comm, torch.device("cpu"))
    model = LlamaForCausalLM.from_config(PRESETS[payload["preset"]], seed=0)
    if layout.needs_mesh:
        parallel.parallelize(model, topology.mesh, layout.tensor, layout.fsdp, mixed_bf16=False)
    optimizer = AdamW(model)
    batch, seq = payload["batch"]
    ids = torch.randint(0, 32000, (batch // layout.replicas, seq), generator=torch.Generator())
    model(ids, labels=ids, return_logits=False).loss.backward()
    optimizer.attach_grads()
    optimizer.step(StepContext(1, 1e-3, 1e-3, topology.link))
    params = list(model.parameters())
    state = [t for s in optimizer.torch_optimizer.state.values() for t in s.values()]
    return {
        "parameters": parallel.local_nbytes(params),
        "gradients": parallel.local_nbytes([p.grad for p in params]),
        "optimizer": parallel.local_nbytes(state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="20m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    _record.add_save_flag(parser)
    args = parser.parse_args()

    from psyche_core.distributed import spawn_peers

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    total: dict[str, int] | None = None
    for name, (flags, layout) in LAYOUTS.items():
        world = layout["replicas"] * layout["tensor"]
        payload = {"layout": layout, "preset": args.preset, "batch": (args.batch, args.seq_len)}
        ranks = spawn_peers(world, "gloo", 300, one_rank, payload)
        if total is None:
            total = ranks[0]
        split = (layout["replicas"] if layout["fsdp"] else 1) * layout["tensor"]
        worst = {key: max(r[key] for r in ranks) for key in ranks[0]}
        per_rank_total = max(sum(r.values()) for r in ranks)
        ideal_total = sum(total.values()) / split
        results[name] = {
            "flags": flags,
            "ranks": world,
            "per_rank_bytes": ranks,
            "largest_rank_bytes": worst,
            "ideal_bytes_per_rank": round(ideal_total),
            "largest_rank_vs_ideal": round(per_rank_total / ideal_total, 4),
        }
    _record.emit(
        {
            "benchmark": "parallel_memory",
            "model": f"llama:{args.preset}",
            "optimizer": "adamw",
            "what": "bytes of parameters + gradients + optimizer state held by each rank",
            "target": "largest rank within 10% of the ideal 1/N split (<= 1.10)",
            "layouts": results,
        },
        args.save,
        "parallel_memory",
    )


if __name__ == "__main__":
    main()
