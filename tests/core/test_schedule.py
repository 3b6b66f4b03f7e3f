import math

import pytest

from psyche_core.errors import PsycheError
from psyche_core.schedule import ConstantLR, CosineLR, make_schedule


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


# -- --lr-schedule ------------------------------------------------------------------------------


def test_default_schedule_is_todays_cosine():
    assert make_schedule("cosine", 4e-4, 20, 500) == CosineLR(4e-4, 20, 0.0, 500, 4e-5)


def test_wsd_warms_up_holds_then_decays_to_a_tenth():
    lr = make_schedule("wsd", 1.0, 10, 110, decay_steps=20)
    assert lr(5) == pytest.approx(0.5)
    assert [lr(s) for s in (10, 50, 90)] == [1.0, 1.0, 1.0]
    assert lr(100) == pytest.approx(0.55)  # halfway through a linear decay from 1 to 0.1
    assert lr(110) == pytest.approx(0.1)
    assert lr(200) == pytest.approx(0.1)  # held after the run's end


@pytest.mark.parametrize(
    ("decay_type", "halfway"),
    [("linear", 0.55), ("cosine", 0.55), ("sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.5)))],
)
def test_wsd_decay_types(decay_type, halfway):
    lr = make_schedule("wsd", 1.0, 0, 100, decay_steps=40, decay_type=decay_type)
    assert lr(80) == pytest.approx(halfway)
    assert lr(70) < 1.0 and lr(100) == pytest.approx(0.1)


def test_wsd_default_decay_is_a_fifth_of_the_steps_after_warmup():
    assert make_schedule("wsd", 1.0, 20, 120).decay_steps == 20


def test_wsd_decay_longer_than_the_run_is_one_clear_error():
    with pytest.raises(PsycheError, match="--decay-steps 200 is longer than the run"):
        make_schedule("wsd", 1.0, 10, 110, decay_steps=200)


def test_linear_and_constant_schedules():
    linear = make_schedule("linear", 1.0, 10, 110)
    assert linear(10) == 1.0 and linear(60) == pytest.approx(0.55)
    assert linear(110) == pytest.approx(0.1) and linear(200) == pytest.approx(0.1)
    constant = make_schedule("constant", 1.0, 10, 110)
    assert constant(5) == 0.5 and constant(10) == constant(1000) == 1.0


def test_unknown_schedule():
    with pytest.raises(PsycheError, match="--lr-schedule 'step' is unknown"):
        make_schedule("step", 1.0, 10, 110)
