"""Learning-rate schedules, step-indexed from 1 as in Psyche's train loop.

``--lr-schedule`` picks one: ``cosine`` (Psyche's, the default), ``wsd`` (warmup, stable,
decay: a constant peak and a final decay of ``--decay-steps``), ``linear`` (warmup, then a
straight line to the final rate) or ``constant`` (warmup, then the peak). Every schedule is a
pure function of the step, so a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from psyche_core.errors import PsycheError

LR_SCHEDULES = ("cosine", "wsd", "linear", "constant")
DECAY_TYPES = ("linear", "cosine", "sqrt")


class LRSchedule(Protocol):
    def __call__(self, step: int) -> float: ...

    def describe(self) -> str: ...


def _warmup(step: int, warmup: int, init: float, base: float) -> float:
    return init + (base - init) * (step / warmup)


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
            raise PsycheError(
                f"total steps ({self.total_steps}) must be larger than warmup steps "
                f"({self.warmup_steps})"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_init_lr, self.base_lr)
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.base_lr - self.final_lr) * cosine

    def describe(self) -> str:
        return f"cosine to {self.final_lr:g} at step {self.total_steps}"


@dataclass(frozen=True)
class LinearLR:
    """Linear warmup, then a straight line from ``base_lr`` to ``final_lr`` at ``total_steps``
    (held at ``final_lr`` after)."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    final_lr: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, 0.0, self.base_lr)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.base_lr + (self.final_lr - self.base_lr) * progress

    def describe(self) -> str:
        return f"linear to {self.final_lr:g} at step {self.total_steps}"


@dataclass(frozen=True)
class WarmupConstantLR:
    """Linear warmup, then ``base_lr`` for good."""

    base_lr: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, 0.0, self.base_lr)
        return self.base_lr

    def describe(self) -> str:
        return "constant"


@dataclass(frozen=True)
class WSDLR:
    """Warmup-stable-decay: linear warmup, ``base_lr`` until ``total - decay_steps``, then a
    decay to ``final_lr`` at ``total_steps`` (held there after).

    ``decay_type``: ``linear``; ``cosine`` (half a cosine); ``sqrt`` (``1 - sqrt(p)``, the
    "1-sqrt" cooldown, which drops fast at first).
    """

    base_lr: float
    warmup_steps: int
    total_steps: int
    decay_steps: int
    final_lr: float
    decay_type: str = "linear"

    def __post_init__(self) -> None:
        if self.decay_type not in DECAY_TYPES:
            raise PsycheError(
                f"--decay-type {self.decay_type!r} is unknown; use {', '.join(DECAY_TYPES)}"
            )
        if self.decay_steps < 1:
            raise PsycheError(f"--decay-steps must be at least 1, got {self.decay_steps}")
        if self.decay_steps > self.total_steps - self.warmup_steps:
            raise PsycheError(
                f"--decay-steps {self.decay_steps} is longer than the run after warmup "
                f"({self.total_steps} - {self.warmup_steps} warmup = "
                f"{self.total_steps - self.warmup_steps} steps); lower --decay-steps or "
                "raise --total-steps"
            )

    @property
    def decay_start(self) -> int:
        return self.total_steps - self.decay_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, 0.0, self.base_lr)
        if step <= self.decay_start:
            return self.base_lr
        progress = min(1.0, (step - self.decay_start) / self.decay_steps)
        if self.decay_type == "linear":
            remaining = 1.0 - progress
        elif self.decay_type == "cosine":
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            remaining = 1.0 - math.sqrt(progress)
        return self.final_lr + (self.base_lr - self.final_lr) * remaining

    def describe(self) -> str:
        return (
            f"stable, then {self.decay_type} decay over the last {self.decay_steps} steps to "
            f"{self.final_lr:g} at step {self.total_steps}"
        )


@dataclass(frozen=True)
class ConstantLR:
    lr: float

    def __call__(self, step: int) -> float:
        return self.lr

    def describe(self) -> str:
        return "constant"


def make_schedule(
    kind: str,
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int | None = None,
    decay_type: str = "linear",
) -> CosineLR | LinearLR | WarmupConstantLR | WSDLR:
    """The schedule ``psyche train --lr-schedule KIND`` uses; every decaying schedule ends at
    ``learning_rate / 10`` at ``total_steps``, as Psyche's cosine does.

    ``decay_steps`` (``wsd`` only) defaults to a fifth of the steps after warmup.
    """
    final = learning_rate / 10
    if kind == "cosine":
        return CosineLR(learning_rate, warmup_steps, 0.0, total_steps, final)
    if kind == "linear":
        return LinearLR(learning_rate, warmup_steps, total_steps, final)
    if kind == "constant":
        return WarmupConstantLR(learning_rate, warmup_steps)
    if kind == "wsd":
        if decay_steps is None:
            decay_steps = max(1, (total_steps - warmup_steps) // 5)
        return WSDLR(learning_rate, warmup_steps, total_steps, decay_steps, final, decay_type)
    raise PsycheError(f"--lr-schedule {kind!r} is unknown; use {', '.join(LR_SCHEDULES)}")
