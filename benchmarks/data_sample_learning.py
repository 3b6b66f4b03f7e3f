"""How fast a ~1M-parameter causal transformer learns the embedded sample data, on CPU.

Prints one JSON object: the loss every few steps, the entropy floor of the data, and the
unigram / bigram baselines (the losses of those count models on the same data), so the curve
can be read against them. A stand-alone Llama-like model (RMSNorm, causal attention, SwiGLU),
so this runs with psyche-data alone:

    python benchmarks/data_sample_learning.py --steps 300 --threads 2
"""

from __future__ import annotations

import argparse
import math
import time

import _record
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from psyche_core.sample_data import VOCAB_SIZE, SampleDataProvider


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k = rotary(q, positions), rotary(k, positions)  # (B, T, H, D/H)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = positions[:, None].float() * freqs  # (T, D/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class TinyLM(nn.Module):
    def __init__(self, dim=128, layers=4, heads=4, hidden=344) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, VOCAB_SIZE, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        positions = torch.arange(ids.shape[1])
        for block in self.blocks:
            x = block(x, positions)
        return self.head(self.norm(x))


def count_model_losses(tokens: np.ndarray) -> dict[str, float]:
    x, y = tokens[:, :-1].ravel(), tokens[:, 1:].ravel()
    unigram = np.bincount(y, minlength=VOCAB_SIZE) / len(y)
    pairs = np.zeros((VOCAB_SIZE, VOCAB_SIZE))
    np.add.at(pairs, (x, y), 1)
    bigram = pairs / np.maximum(pairs.sum(1, keepdims=True), 1)
    return {
        "unigram": float(-np.log(unigram[y]).mean()),
        "bigram": float(-np.log(bigram[x, y]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=int, default=25)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    data = SampleDataProvider(args.sequence_length, seed=0)
    generate_s = time.perf_counter() - started
    model = TinyLM()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    warmup = max(1, args.steps // 15)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    curve = []
    started = time.perf_counter()
    for step in range(args.steps):
        first = (step * args.batch) % (data.num_sequences - args.batch)
        batch = torch.from_numpy(data.read(range(first, first + args.batch))).long()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.every == 0 or step == args.steps - 1:
            curve.append(
                {
                    "step": step + 1,
                    "loss": round(loss.item(), 3),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    _record.emit(
        {
            "benchmark": "sample data learning curve",
            "parameters": params,
            "threads": args.threads,
            "sequence_length": args.sequence_length,
            "batch": args.batch,
            "generate_seconds": round(generate_s, 2),
            "ln_vocab": round(math.log(VOCAB_SIZE), 3),
            "entropy_floor": round(data.entropy_floor, 3),
            **{k: round(v, 3) for k, v in count_model_losses(data.data.tokens).items()},
            "curve": curve,
        },
        args.save,
        "data_sample_learning",
    )


if __name__ == "__main__":
    main()
