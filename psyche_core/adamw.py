"""AdamW: torch's implementation on the data-parallel mean gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM
from psyche_core.optim import Optimizer, StepContext
from psyche_core.options import Options


class AdamW(Optimizer):
    """``torch.optim.AdamW`` with the learning rate set per step by the schedule.

    Weight decay applies to every parameter, as Psyche's AdamW does.
    """

    averages_gradients = True
    supports_sharding = True  # elementwise: each rank updates the shard it holds
    layout_free_state = True

    def __init__(
        self,
        model: CausalLM,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
    ) -> None:
        super().__init__(model.named_parameters())
        for name, value in (("beta1", betas[0]), ("beta2", betas[1])):
            if not 0.0 <= value < 1.0:
                raise PsycheError(f"--{name} must be in [0, 1), got {value}")
        if eps <= 0:
            raise PsycheError(f"--eps must be positive, got {eps}")
        if weight_decay < 0:
            raise PsycheError(f"--weight-decay must be >= 0, got {weight_decay}")
        # The fused kernel (CPU and CUDA) is 3-4x faster than foreach on the 20M preset and
        # deterministic; every peer uses the same choice, so peers stay identical.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.params)
        self.torch_optimizer = torch.optim.AdamW(
            self.params,
            lr=0.0,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=not fused,
            fused=fused,
        )

    def step(self, ctx: StepContext) -> dict[str, Any]:
        for group in self.torch_optimizer.param_groups:
            group["lr"] = ctx.lr
        self.torch_optimizer.step()
        return {}

    def state_dict(self) -> dict[str, Any]:
        """torch's AdamW state with every moment tensor whole (gathered from the shards of a
        tensor-parallel or FSDP run), so a checkpoint resumes on any layout."""
        return self._map_moments(self.torch_optimizer.state_dict(), self.full_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch_optimizer.load_state_dict(self._map_moments(state, self.local_state))

    def _map_moments(
        self, state: dict[str, Any], convert: Callable[[str, torch.Tensor], torch.Tensor]
    ) -> dict[str, Any]:
        """``state`` with ``convert(name, tensor)`` applied to every moment of a sharded run.
        torch's state dict shares the per-parameter dicts with the live optimizer: new ones are
        built rather than the optimizer's own state overwritten."""
        if not self.shards:
            return state
        state = {**state, "state": dict(state["state"])}
        for index, (name, _) in enumerate(self.named_params):
            moments = state["state"].get(index)
            if moments is not None:
                state["state"][index] = {
                    key: value if key == "step" else convert(name, value)
                    for key, value in moments.items()
                }
        return state


def build_adamw(model: CausalLM, options: Options) -> AdamW:
    return AdamW(
        model,
        betas=(options.beta1, options.beta2),
        eps=options.eps,
        weight_decay=options.weight_decay,
    )
