"""Bytes DisTrO sends per step per peer, against a dense fp32 gradient, for the ~20M Llama preset.

For each scheme (values in bf16 / fp32 / 1-bit, at ``--chunk`` and ``--topk``) this builds the
real optimizer on parameters of the preset's shapes (psyche-llama's ``20m`` preset when
installed, else the same shapes built here), runs one real step through the in-process
communicator and reads the bytes the communicator counted. It checks them against the design's
formula (distro.md 3.2) computed independently here, and prints one JSON object.

    python benchmarks/distro_bytes.py [--chunk 64] [--topk 4]
"""

from __future__ import annotations

import argparse
import math

import _record
import torch
from distro_step_time import llama_20m  # same directory: the shared preset builder

from psyche_core.comm import LocalGroup
from psyche_core.optim import StepContext
from psyche_distro.dct import smaller_split
from psyche_distro.optimizer import DistroOptimizer

TARGETS = {"bf16": 1000.0, "1-bit": 1900.0}  # minimum ratio vs a dense fp32 gradient


def formula_bytes(shapes: list[tuple[int, ...]], chunk: int, topk: int, value_bits: int) -> int:
    """distro.md 3.2, written out again on purpose (not the package's own helper)."""
    total = 0
    for shape in shapes:
        if len(shape) == 1:
            n = smaller_split(shape[0], chunk)
            chunks, t = shape[0] // n, n
        else:
            n1, n2 = smaller_split(shape[-2], chunk), smaller_split(shape[-1], chunk)
            chunks = math.prod(shape[:-2]) * (shape[-2] // n1) * (shape[-1] // n2)
            t = n1 * n2
        m = chunks * min(max(topk, 1), t)
        index_bytes = 1 if t <= 256 else 2 if t <= 65536 else 4 if t <= 2**32 else 8
        total += m * index_bytes + math.ceil(m * value_bits / 8)
    return total


def measure(dtype: torch.dtype, one_bit: bool, chunk: int, topk: int) -> dict:
    model, source = llama_20m(dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = DistroOptimizer(model, chunk=chunk, topk=topk, quantize_1bit=one_bit)
    comm = LocalGroup(1).communicator(0)
    metrics = opt.step(StepContext(step=1, lr=4e-4, prev_lr=4e-4, communicator=comm))
    shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    numel = sum(math.prod(s) for s in shapes)
    bits = 1 if one_bit else 8 * torch.empty((), dtype=dtype).element_size()
    expected = formula_bytes(shapes, chunk, topk, bits)
    assert comm.bytes_sent == metrics["distro_payload_bytes"] == opt.payload_nbytes
    dense = 4 * numel
    return {
        "values": "1-bit" if one_bit else str(dtype).removeprefix("torch."),
        "parameters": numel,
        "source": source,
        "coefficients_per_step": opt.layout.coefficients,
        "payload_bytes_per_step": comm.bytes_sent,
        "formula_bytes": expected,
        "matches_formula": comm.bytes_sent == expected,
        "dense_fp32_gradient_bytes": dense,
        "ratio_vs_dense_fp32": round(dense / comm.bytes_sent, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--topk", type=int, default=4)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    schemes = [
        measure(torch.bfloat16, False, args.chunk, args.topk),
        measure(torch.float32, False, args.chunk, args.topk),
        measure(torch.bfloat16, True, args.chunk, args.topk),
    ]
    ratios = {s["values"]: s["ratio_vs_dense_fp32"] for s in schemes}
    _record.emit(
        {
            "benchmark": "distro_bytes",
            "chunk": args.chunk,
            "topk": args.topk,
            "schemes": schemes,
            "targets_vs_dense_fp32": {"bf16 values": 1000, "1-bit values": 1900},
            "targets_met": {
                "bf16": ratios["bfloat16"] >= TARGETS["bf16"],
                "1-bit": ratios["1-bit"] >= TARGETS["1-bit"],
            },
            "all_match_formula": all(s["matches_formula"] for s in schemes),
        },
        args.save,
        "distro_bytes",
    )


if __name__ == "__main__":
    main()
