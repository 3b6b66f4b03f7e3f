"""The chunked head + loss with ``--compile``: the fused per-chunk softmax/gradient kernel gives
the eager path's loss and gradients, in float32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from psyche_core import losses
from psyche_core.compiling import compiler_problem
from psyche_core.losses import linear_cross_entropy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(compiler_problem(torch.device("cpu")) is not None, reason="no compiler"),
]


@pytest.mark.parametrize("mixed", [False, True], ids=["float32", "bf16-autocast"])
def test_compiled_chunks_match_eager(monkeypatch, mixed):
    monkeypatch.setattr(losses, "LOSS_CHUNK_ELEMENTS", 500 * 40)  # 40-row chunks, last ragged
    monkeypatch.setattr(losses, "LOSS_BLOCK_CHUNKS", 2)  # bf16: blocks of 80 and 30 rows
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(110, 32, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(500, 32, generator=g)).requires_grad_()
    targets = torch.randint(0, 500, (110,), generator=g)
    targets[::7] = -100
    results = []
    for compiled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = linear_cross_entropy(hidden, weight, targets, compiled)
        results.append((loss, *torch.autograd.grad(loss, (hidden, weight))))
    for eager, fused in zip(*results):
        assert fused.dtype == eager.dtype
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)


def test_compile_loss_marks_the_head_only():
    head = torch.nn.Linear(8, 50, bias=False)
    other = torch.nn.Linear(8, 50, bias=False)
    losses.compile_loss(head)
    assert head in losses._COMPILED_HEADS and other not in losses._COMPILED_HEADS
    assert list(head.state_dict()) == ["weight"]
