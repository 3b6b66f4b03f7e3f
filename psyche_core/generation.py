"""Sampling from a trained model: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM


def next_token_distribution(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Probabilities over the vocabulary after temperature, top-k and top-p filtering."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs /= probs.sum()
    return probs


@torch.no_grad()
def generate(
    model: CausalLM,
    prompt: Sequence[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> list[int]:
    """Continue ``prompt``; ``temperature`` 0 is greedy. Returns only the new tokens.

    Each step re-runs the model on the whole sequence (no KV cache): simple and exact, meant for
    looking at what a small model learned.
    """
    if not prompt:
        raise PsycheError("the prompt is empty; give at least one token")
    if temperature < 0:
        raise PsycheError(f"--temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise PsycheError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise PsycheError(f"--top-p must be in (0, 1], got {top_p}")
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eos = set(model.eos_token_ids) if stop_at_eos else set()
    new: list[int] = []
    for _ in range(max_new_tokens):
        if ids.shape[1] >= model.max_context_length:
            break
        logits = model(ids, num_logits_to_keep=1)[0][0, -1]
        if temperature == 0:
            token = int(torch.argmax(logits))
        else:
            probs = next_token_distribution(logits.cpu(), temperature, top_k, top_p)
            token = int(torch.multinomial(probs, 1, generator=generator))
        new.append(token)
        if token in eos:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return new
