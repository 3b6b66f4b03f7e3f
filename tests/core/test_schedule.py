import math

import pytest

from psyche_core.errors import PsycheError
from psyche_core.schedule import ConstantLR, CosineLR


def test_cosine_lr_matches_psyche_golden_values():
    # Psyche's own test (shared/core/src/definitions.rs): CosineLR(0.01, 10, 0.001, 110, 0.0)
    lr = CosineLR(0.01, 10, 0.001, 110, 0.0)
    for step, expected in [(0, 0.001), (5, 0.0055), (10, 0.01), (60, 0.005), (110, 0.0)]:
        assert lr(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step", [1, 7, 19, 20, 21, 150, 299, 300])
def test_cosine_lr_follows_the_formula_used_by_psyche_train(step):
    base, warmup, total = 4e-4, 20, 300
    lr = CosineLR(base, warmup, 0.0, total, base / 10)
    if step < warmup:
        expected = base * step / warmup
    else:
        p = (step - warmup) / (total - warmup)
        expected = base / 10 + (base - base / 10) * 0.5 * (1 + math.cos(math.pi * p))
    assert lr(step) == pytest.approx(expected, rel=1e-12)


def test_cosine_lr_is_not_clamped_after_total_steps():
    lr = CosineLR(1.0, 0, 0.0, 10, 0.1)
    assert lr(10) == pytest.approx(0.1)
    assert lr(15) > lr(10)  # Psyche lets the cosine rise again


def test_cosine_lr_rejects_total_not_above_warmup():
    with pytest.raises(PsycheError, match="larger than warmup"):
        CosineLR(1.0, 10, 0.0, 10, 0.1)


def test_constant_lr():
    assert ConstantLR(0.5)(123) == 0.5
