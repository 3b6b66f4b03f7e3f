"""Learning-rate schedules, step-indexed from 1 as in Psyche's train loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class LRSchedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class CosineLR:
    """Psyche's ``CosineLR``: linear warmup from ``warmup_init_lr``, then cosine to ``final_lr``.

    ``lr(s) = init + (base - init) * s / warmup`` for ``s < warmup``; after that
    ``p = (s - warmup) / (total - warmup)`` and
    ``lr = final + (base - final) * (1 + cos(pi p)) / 2``.
    Like Psyche there is no clamp past ``total_steps`` (the cosine rises again).
    ``psyche train`` uses ``CosineLR(lr, warmup, 0, total, lr / 10)``.
    """

    base_lr: float
    warmup_steps: int
    warmup_init_lr: float
    total_steps: int
    final_lr: float

    def __post_init__(self) -> None:
        if self.total_steps <= self.warmup_steps:
            from psyche_core.errors import PsycheError

            raise PsycheError(
                f"total steps ({self.total_steps}) must be larger than warmup steps "
                f"({self.warmup_steps})"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_init_lr + (self.base_lr - self.warmup_init_lr) * (
                step / self.warmup_steps
            )
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.base_lr - self.final_lr) * cosine


@dataclass(frozen=True)
class ConstantLR:
    lr: float

    def __call__(self, step: int) -> float:
        return self.lr
