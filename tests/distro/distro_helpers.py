"""Small models and a step driver for the DisTrO tests (tiny tensors, float64 by default)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from psyche_core.comm import Communicator, LocalGroup
from psyche_core.optim import StepContext
from psyche_distro.optimizer import DistroOptimizer


class Tiny(nn.Module):
    """Three parameters covering the chunk layouts at chunk size 4: a matrix of 4x4 tiles
    (T = 16), a 1-D vector (chunks of 4) and a 3-D tensor with 3x4 tiles (T = 12)."""

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(8, 12, generator=g).to(dtype))
        self.bias = nn.Parameter(torch.randn(12, generator=g).to(dtype))
        self.cube = nn.Parameter(torch.randn(2, 6, 8, generator=g).to(dtype))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """A smooth, weight-dependent loss for input ``x`` of shape (B, 8)."""
        hidden = torch.tanh(x @ self.weight + self.bias)  # (B, 12)
        return hidden.pow(2).mean() + (torch.sin(self.cube) * x.mean()).sum()


def away_from_zero(shape: tuple[int, ...], g: torch.Generator, dtype=torch.float64):
    """Random values with magnitudes in [0.5, 1.5] and random signs."""
    magnitude = 0.5 + torch.rand(shape, generator=g)
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    return (magnitude * sign).to(dtype)


def lr_schedule(step: int) -> float:
    """A learning rate that changes every step, so lr / prev_lr mix-ups show."""
    return 0.01 * (1.0 + 0.1 * step)


def context(
    step: int,
    communicator: Communicator,
    lr: Callable[[int], float] = lr_schedule,
    collect_stats: bool = False,
) -> StepContext:
    return StepContext(
        step=step,
        lr=lr(step),
        prev_lr=lr(max(step - 1, 0)),
        communicator=communicator,
        collect_stats=collect_stats,
    )


def train(
    model: Tiny,
    opt: DistroOptimizer,
    steps: range,
    grads: Callable[[Tiny, int], None],
    communicator: Communicator | None = None,
    lr: Callable[[int], float] = lr_schedule,
    collect_stats: bool = False,
) -> list[dict]:
    """Drive ``opt`` as the trainer does: prepare_step, gradients, step. ``grads(model, step)``
    fills ``.grad`` (it runs with the lookahead applied, as the forward/backward would)."""
    communicator = communicator or LocalGroup(1).communicator(0)
    metrics = []
    for step in steps:
        ctx = context(step, communicator, lr, collect_stats)
        opt.prepare_step(ctx)
        model.zero_grad(set_to_none=True)
        grads(model, step)
        metrics.append(opt.step(ctx))
    return metrics


def data_grads(rank: int = 0, batch: int = 4) -> Callable[[Tiny, int], None]:
    """Gradients of :meth:`Tiny.loss` on seeded data for (rank, step)."""

    def fill(model: Tiny, step: int) -> None:
        g = torch.Generator().manual_seed(1000 * rank + step)
        x = torch.randn(batch, 8, generator=g).to(model.weight.dtype)
        model.loss(x).backward()

    return fill


def fixed_grads(seed: int = 0) -> Callable[[Tiny, int], None]:
    """theta-independent gradients (a linear loss), magnitudes away from zero."""

    def fill(model: Tiny, step: int) -> None:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        for p in model.parameters():
            p.grad = away_from_zero(tuple(p.shape), g, p.dtype)

    return fill


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bitwise equality of two name -> tensor dicts."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def peer_training(comm: Communicator, job: dict) -> dict[str, bytes]:
    """A peer for ``run_local_peers`` / ``spawn_peers`` (module level, so processes can pickle
    it): trains :class:`Tiny` on its own data for ``job["steps"]`` steps; returns the weights'
    raw bytes (tensors sent back through a multiprocessing queue would be shared through file
    descriptors that vanish with the worker)."""
    model = Tiny(dtype=torch.float32)
    opt = distro(model, weight_decay=0.1, **job["options"])
    train(model, opt, range(1, job["steps"] + 1), data_grads(comm.rank), communicator=comm)
    return {name: t.numpy().tobytes() for name, t in params_of(model).items()}


def distro(model: nn.Module, **kwargs) -> DistroOptimizer:
    """A DisTrO optimizer with the tests' small defaults (chunk 4, top-k 2, decay 0.9)."""
    kwargs.setdefault("chunk", 4)
    kwargs.setdefault("topk", 2)
    kwargs.setdefault("decay", 0.9)
    return DistroOptimizer(model, **kwargs)
