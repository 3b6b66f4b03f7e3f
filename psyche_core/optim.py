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

from psyche_core import parallel
from psyche_core.comm import Communicator
from psyche_core.errors import PsycheError


@dataclass(frozen=True)
class StepContext:
    """What an optimizer knows about the step it is taking."""

    step: int
    lr: float
    prev_lr: float
    communicator: Communicator
    collect_stats: bool = False


class Optimizer(ABC):
    """Base for psyche optimizers. Factories have the signature ``factory(model, options)``.

    Under tensor parallelism or FSDP the model's parameters are DTensors; the base class gives
    the optimizer plain parameters that alias this rank's local shards (``named_params``), and
    the trainer points their ``.grad`` at the local gradients before :meth:`step`. An optimizer
    that can work on shards says so with ``supports_sharding``.
    """

    #: when True the trainer all-reduces the mean gradient before :meth:`step`.
    averages_gradients: ClassVar[bool] = True
    #: the optimizer updates each parameter from what this rank holds of it (elementwise, or
    #: per chunk as DisTrO): it can run on tensor-parallel and FSDP shards.
    supports_sharding: ClassVar[bool] = False
    #: :meth:`state_dict` holds full tensors (gathered with :meth:`full_state`), so a
    #: checkpoint resumes on any parallel layout; otherwise each rank's state is saved and a
    #: sharded run resumes on the same layout only.
    layout_free_state: ClassVar[bool] = False

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]]) -> None:
        # Named parameters in one fixed order, shared by every peer (payloads are positional).
        named = [(name, p) for name, p in params if p.requires_grad]
        self.named_params, self.shards = parallel.shard_views(named)
        if self.shards and not self.supports_sharding:
            raise PsycheError(
                f"the {type(self).__name__} optimizer cannot update sharded parameters "
                "(--tensor-parallelism > 1 or --fsdp); run it without them"
            )

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    def attach_grads(self) -> None:
        """Point each shard view's ``.grad`` at its parameter's local gradient (the trainer
        calls this after backward)."""
        for shard in self.shards.values():
            shard.attach_grad()

    def full_state(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The full tensor of per-parameter state ``tensor`` (shaped like this rank's part of
        parameter ``name``); a collective under sharding: every rank calls it."""
        return parallel.gather_full(self.shards.get(name), tensor)

    def local_state(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full per-parameter state tensor of parameter ``name``."""
        return parallel.local_part(self.shards.get(name), full)

    def global_shape(self, name: str, param: nn.Parameter) -> tuple[int, ...]:
        """The shape of parameter ``name`` as the model sees it (its full shape when sharded)."""
        shard = self.shards.get(name)
        return shard.global_shape if shard is not None else tuple(param.shape)

    def shard_offsets(self, name: str, param: nn.Parameter) -> tuple[int, ...]:
        """Where this rank's part of parameter ``name`` starts in the full tensor."""
        shard = self.shards.get(name)
        return shard.offsets if shard is not None else (0,) * param.dim()

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
        for shard in self.shards.values():
            shard.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors and plain numbers only (no pickled objects)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of all gradients, in float32. Sharded (DTensor) gradients count whole:
    their norm is reduced over the shards (a collective: every rank of the mesh calls it)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    plain = [g for g in grads if not parallel.is_sharded(g)]
    if len(plain) == len(grads):
        norms = torch._foreach_norm(grads)
        return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    squares = [torch.zeros((), dtype=torch.float32)]
    if plain:
        norms = torch._foreach_norm(plain)
        squares.append(torch.stack([n.float() for n in norms]).square().sum().cpu())
    for g in grads:
        if parallel.is_sharded(g):
            norm = torch.linalg.vector_norm(g, dtype=torch.float32).full_tensor()
            squares.append(norm.square().cpu())
    return torch.stack(squares).sum().sqrt()


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Psyche's clipping: scale every gradient by ``max_norm / (norm + 1e-6)`` when the global
    norm exceeds ``max_norm``; ``max_norm <= 0`` disables. Returns the norm before clipping."""
    params = list(params)
    norm = float(grad_norm(params))
    if max_norm > 0 and norm > max_norm:
        grads = [parallel.local(p.grad) for p in params if p.grad is not None]
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
