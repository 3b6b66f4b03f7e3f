"""The chunked head + loss under bf16 autocast (``--precision bf16-mixed``): every head matmul in
bfloat16, as ``nn.Linear`` + cross entropy under autocast, with float32 gradients out."""

from __future__ import annotations

import pytest
import torch

from psyche_core import losses
from psyche_core.losses import linear_cross_entropy


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(96, 32, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(500, 32, generator=g)).requires_grad_()
    targets = torch.randint(0, 500, (96,), generator=g)
    targets[::7] = -100
    return hidden, weight, targets


def _grads(fn, hidden, weight, targets):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(hidden, weight, targets)
    return (loss, *torch.autograd.grad(loss, (hidden, weight)))


def _reference(hidden, weight, targets):
    logits = torch.nn.functional.linear(hidden, weight)  # bfloat16 under autocast
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100)


@pytest.mark.parametrize("block_chunks", [1, 2, 4], ids=["per-chunk", "ragged-blocks", "one-block"])
def test_matches_linear_plus_cross_entropy_under_autocast(monkeypatch, block_chunks):
    monkeypatch.setattr(losses, "LOSS_CHUNK_ELEMENTS", 500 * 40)  # three chunks of rows
    # weight-gradient products over 1 chunk, over 2 (80 + 16 rows) or over all 96 rows
    monkeypatch.setattr(losses, "LOSS_BLOCK_CHUNKS", block_chunks)
    hidden, weight, targets = _inputs()
    loss, grad_h, grad_w = _grads(linear_cross_entropy, hidden, weight, targets)
    want, want_h, want_w = _grads(_reference, hidden, weight, targets)
    assert grad_h.dtype == grad_w.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-3, atol=1e-3)
    # bfloat16 products round differently chunk by chunk: agree to bfloat16 precision
    torch.testing.assert_close(grad_h, want_h, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(grad_w, want_w, rtol=2e-2, atol=2e-4)


def test_gradient_products_are_bfloat16_under_autocast():
    """The float32 route would agree with float32 math far better than bfloat16 allows; the
    gap to the float32 gradient shows the products really ran in bfloat16."""
    hidden, weight, targets = _inputs(1)
    _, grad_h, grad_w = _grads(linear_cross_entropy, hidden, weight, targets)
    exact = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    exact_h, exact_w = torch.autograd.grad(exact, (hidden, weight))
    for got, want in ((grad_h, exact_h), (grad_w, exact_w)):
        error = ((got - want).norm() / want.norm()).item()
        assert 1e-4 < error < 3e-2, error
