"""Tensor parallelism and FSDP on PyTorch's own engine, and the shard views optimizers use.

- :func:`parallelize` applies the model plugin's tensor-parallel plan
  (:meth:`~psyche_core.model.CausalLM.tensor_parallel_plan`) with DTensor's
  ``parallelize_module`` over the ``tp`` mesh dimension, then FSDP2's ``fully_shard`` over the
  ``replica`` dimension when ``--fsdp`` asks for it (FSDP2 composes with the TP DTensors).
- Optimizers work on **local shards**: :class:`ShardedParam` pairs a DTensor parameter with an
  ``nn.Parameter`` that aliases its local tensor, so an elementwise optimizer (AdamW) or one that
  compresses what it holds (DisTrO) runs unchanged on the part this rank owns. The trainer points
  each view's ``.grad`` at the local gradient before the step.
- :func:`gather_full` / :func:`local_part` turn a shard-shaped tensor into the full tensor and
  back, so optimizer state can be saved in a layout-free form.
- :func:`full_weights` gathers a sharded model's weights on every rank for saving an ordinary
  Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from psyche_core.errors import PsycheError


@functools.cache
def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed support
        return None
    return DTensor


def is_sharded(tensor: Any) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds (the tensor itself when it is not a DTensor)."""
    return tensor._local_tensor if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


# -- applying a layout --------------------------------------------------------------------------


def parallelize(model: nn.Module, mesh: Any, tensor: int, fsdp: bool, mixed_bf16: bool) -> None:
    """Shard ``model`` in place over ``mesh`` (dims ``peer``, ``replica``, ``tp``)."""
    if tensor > 1:
        plan = model.tensor_parallel_plan(tensor)
        if plan is None:
            raise PsycheError(
                f"{type(model).__name__} declares no tensor-parallel plan; run it with "
                "--tensor-parallelism 1 (or give the model plugin a tensor_parallel_plan)"
            )
        from torch.distributed.tensor.parallel import parallelize_module

        parallelize_module(model, mesh["tp"], plan)
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from psyche_core.compiling import repeated_blocks

        # over the replicas only: FSDP2 composes with the tensor-parallel DTensors it finds
        shard_mesh = mesh["replica"]
        policy = MixedPrecisionPolicy()
        if mixed_bf16:  # bf16-mixed: gather and compute in bf16, reduce gradients in fp32
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in repeated_blocks(model):
            fully_shard(block, mesh=shard_mesh, mp_policy=policy)
        fully_shard(model, mesh=shard_mesh, mp_policy=policy)


def require_divisible(degree: int, sizes: dict[str, int]) -> None:
    """Refuse ``--tensor-parallelism degree`` unless it divides every named model size (heads
    and intermediate widths split whole), one line naming the first that it does not."""
    for field, value in sizes.items():
        if value % degree:
            raise PsycheError(
                f"--tensor-parallelism {degree} must divide the model's {field} ({value}); "
                "pick a divisor"
            )


def vocab_parallel_plan(
    config: Any, degree: int, embed: str = "model.embed_tokens", head: str = "lm_head"
) -> dict[str, Any]:
    """The vocabulary split of a model plugin's plan: the embedding by rows, the LM head by
    columns with its logits gathered for the loss; ``{}`` (both whole) when they are tied (one
    parameter cannot take two layouts) or ``degree`` does not divide the vocabulary."""
    if config.tie_word_embeddings or config.vocab_size % degree:
        return {}
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        embed: RowwiseParallel(input_layouts=Replicate()),
        head: ColwiseParallel(output_layouts=Replicate()),
    }


# -- optimizer views of local shards ------------------------------------------------------------


@dataclass
class ShardedParam:
    """A DTensor parameter and the plain parameter that aliases its local shard."""

    param: nn.Parameter  # the model's (DTensor) parameter
    view: nn.Parameter  # what the optimizer updates in place

    def attach_grad(self) -> None:
        grad = self.param.grad
        if grad is not None and grad.placements != self.param.placements:
            # autograd may leave a gradient laid out otherwise (an embedding's replicated);
            # the optimizer needs it where the parameter is
            grad = grad.redistribute(self.param.device_mesh, self.param.placements)
            self.param.grad = grad
        self.view.grad = None if grad is None else local(grad)

    @property
    def global_shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where this rank's shard starts in the full tensor, per dimension."""
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        spec = self.param._spec  # type: ignore[attr-defined]
        _, offsets = compute_local_shape_and_global_offset(
            self.param.shape, spec.mesh, spec.placements
        )
        return tuple(int(o) for o in offsets)


def shard_views(
    named: list[tuple[str, nn.Parameter]],
) -> tuple[list[tuple[str, nn.Parameter]], dict[str, ShardedParam]]:
    """Replace DTensor parameters by views of their local shards; returns the new list and the
    sharded ones by name."""
    out: list[tuple[str, nn.Parameter]] = []
    sharded: dict[str, ShardedParam] = {}
    for name, p in named:
        if not is_sharded(p):
            out.append((name, p))
            continue
        # nn.Parameter aliases the storage of the tensor it wraps: updating the view in place
        # updates the DTensor's local shard.
        view = nn.Parameter(local(p.detach()), requires_grad=p.requires_grad)
        sharded[name] = ShardedParam(p, view)
        out.append((name, view))
    return out, sharded


def gather_full(shard: ShardedParam | None, tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of which ``tensor`` (shaped like ``shard``'s local part) is this rank's
    part; a collective over the parameter's mesh (every rank calls it)."""
    if shard is None:
        return tensor
    from torch.distributed.tensor import DTensor

    spec = shard.param._spec  # type: ignore[attr-defined]
    dt = DTensor.from_local(
        tensor,
        spec.mesh,
        spec.placements,
        run_check=False,
        shape=shard.param.shape,
        stride=shard.param.stride(),
    )
    return dt.full_tensor()


def local_part(shard: ShardedParam | None, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of a full tensor shaped like ``shard``'s parameter (no communication)."""
    if shard is None:
        return full
    if tuple(full.shape) != shard.global_shape:
        raise PsycheError(
            f"saved optimizer state has shape {tuple(full.shape)}, the parameter "
            f"{shard.global_shape}"
        )
    index = tuple(slice(o, o + n) for o, n in zip(shard.offsets, shard.view.shape, strict=True))
    return full[index].clone()


# -- saving -------------------------------------------------------------------------------------


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Inside, ``model.hf_state_dict()`` gives full tensors on every rank (gathered from shards
    now, a collective: every rank enters), so rank 0 can write an ordinary HF checkpoint."""
    state = model.state_dict(keep_vars=True)
    gathered = {
        key: value.full_tensor().detach() for key, value in state.items() if is_sharded(value)
    }
    if not gathered:
        yield
        return
    model._psyche_full_tensors = {id(state[key]): value for key, value in gathered.items()}
    try:
        yield
    finally:
        del model._psyche_full_tensors


def unsharded(model: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a state-dict value of ``model``) as a full tensor inside :func:`full_weights`."""
    if not is_sharded(tensor):
        return tensor
    full = getattr(model, "_psyche_full_tensors", {}).get(id(tensor))
    if full is None:
        raise PsycheError("sharded weights are saved inside psyche_core.parallel.full_weights()")
    return full


def local_nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes this rank holds of ``tensors`` (local shards of DTensors)."""
    return sum(local(t).numel() * local(t).element_size() for t in tensors if t is not None)
