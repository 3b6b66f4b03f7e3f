"""The :class:`Optimizer` contract: one update per global step, across data-parallel peers.

The trainer drives an optimizer like this, on every peer::

    optimizer.prepare_step(ctx)          # before forward/backward (DisTrO's lookahead)
    ... forward + backward over the micro-batches ...
    if optimizer.averages_gradients:      # AdamW: mean gradient over peers, then clip
        ctx.communicator.all_reduce_mean_(grads)
    clip(grads, max_grad_norm)
    stats = optimizer.step(ctx)          # the update; DisTrO exchanges its payload here

An optimizer that exchanges something other than gradients (DisTrO) sets
``averages_gradients = False`` and talks to ``ctx.communicator`` itself. Every peer must end a
step with bit-identical weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from psyche_core.comm import Communicator


@dataclass(frozen=True)
class StepContext:
    """What an optimizer knows about the step it is taking."""

    step: int
    lr: float
    prev_lr: float
    communicator: Communicator
    collect_stats: bool = False


class Optimizer(ABC):
    """Base for psyche optimizers. Factories have the signature ``factory(model, options)``."""

    #: when True the trainer all-reduces the mean gradient before :meth:`step`.
    averages_gradients: ClassVar[bool] = True

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]]) -> None:
        # Named parameters in one fixed order, shared by every peer (payloads are positional).
        self.named_params: list[tuple[str, nn.Parameter]] = [
            (name, p) for name, p in params if p.requires_grad
        ]

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    def prepare_step(self, ctx: StepContext) -> None:
        """Called before the step's forward/backward passes."""

    @abstractmethod
    def step(self, ctx: StepContext) -> dict[str, Any]:
        """Update the parameters from their ``.grad``; return metrics for this step."""

    def abort_step(self, ctx: StepContext) -> None:
        """Undo :meth:`prepare_step` when a step is abandoned after it ran."""

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors and plain numbers only (no pickled objects)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of all gradients, in float32."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Psyche's clipping: scale every gradient by ``max_norm / (norm + 1e-6)`` when the global
    norm exceeds ``max_norm``; ``max_norm <= 0`` disables. Returns the norm before clipping."""
    params = list(params)
    norm = float(grad_norm(params))
    if max_norm > 0 and norm > max_norm:
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
