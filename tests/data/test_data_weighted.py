"""The weighted provider: deterministic mixing, proportions, and its TOML tables."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from data_helpers import make_options, write_tokens

import psyche_data.plugin
from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins
from psyche_data.weighted import WeightedDataProvider, allocate, build_weighted

PROVIDERS = Plugins.load(entry_points=False, extra=[psyche_data.plugin]).data_providers


class Constant(DataProvider):
    """Sample ``i`` is ``[tag, i]``."""

    def __init__(self, tag: int, n: int) -> None:
        self.tag, self.n = tag, n
        self.closed = False

    @property
    def num_sequences(self) -> int:
        return self.n

    def get_samples(self, ids):
        assert all(0 <= i < self.n for i in ids)
        return [TokenizedData(np.array([self.tag, i])) for i in ids]

    def close(self) -> None:
        self.closed = True


def pairs(provider, ids):
    return [tuple(s.input_ids.tolist()) for s in provider.get_samples(ids)]


def test_allocate():
    assert allocate(10, [1, 1, 2]) == [3, 2, 5]  # 2.5, 2.5, 5: the tie goes to the first
    assert allocate(7, [1.0]) == [7]
    assert sum(allocate(1001, [0.3, 0.3, 0.4])) == 1001


def test_proportions_hold_in_every_stretch():
    mix = WeightedDataProvider([Constant(0, 500), Constant(1, 500)], [3, 1])
    assert mix.num_sequences == 1000
    tags = np.array([t for t, _ in pairs(mix, range(1000))])
    assert (tags == 0).sum() == 750
    for start in range(0, 1000, 40):
        assert abs((tags[start : start + 40] == 0).sum() - 30) <= 1
    # each provider's samples come in order, the small one's wrapping around when upsampled
    mix = WeightedDataProvider([Constant(0, 10), Constant(1, 1000)], [1, 1])
    got = pairs(mix, range(mix.num_sequences))
    assert [i for t, i in got if t == 0][:25] == [*range(10), *range(10), *range(5)]


def test_default_weights_follow_sizes_and_seeded_order_is_deterministic():
    def make(seed):
        return WeightedDataProvider([Constant(0, 30), Constant(1, 90)], None, seed)

    mix = make(None)
    assert mix.counts == [30, 90]
    a, b, c = pairs(make(4), range(120)), pairs(make(4), range(120)), pairs(make(5), range(120))
    assert a == b
    assert a != c
    assert sorted(a) == sorted(pairs(mix, range(120)))
    # golden: the first ids of the seeded mixture never change
    assert a[:6] == [(0, 22), (0, 13), (1, 67), (1, 7), (0, 6), (1, 42)]


def test_ids_past_the_end_and_bad_weights():
    mix = WeightedDataProvider([Constant(0, 3)], [1.0])
    with pytest.raises(PsycheError, match="past the end"):
        mix.get_samples(range(2, 4))
    with pytest.raises(PsycheError, match="must be a number >= 0"):
        WeightedDataProvider([Constant(0, 3)], [-1.0])
    with pytest.raises(PsycheError, match="add up to 0"):
        WeightedDataProvider([Constant(0, 3)], [0.0])
    with pytest.raises(PsycheError, match="no samples"):
        WeightedDataProvider([Constant(0, 3), Constant(1, 0)], [1, 1])


def test_zero_weight_provider_is_never_read():
    mix = WeightedDataProvider([Constant(0, 5), Constant(1, 5)], [1, 0], seed=1)
    assert {t for t, _ in pairs(mix, range(10))} == {0}


@pytest.fixture
def two_folders(tmp_path):
    write_tokens(tmp_path / "one" / "x.ds", np.full(400, 1))
    write_tokens(tmp_path / "two" / "x.bin", np.full(800, 2, dtype=np.uint32), token_size=4)
    return tmp_path


def test_built_from_toml_tables(two_folders):
    options = make_options(
        data_provider="weighted",
        sequence_length=10,
        seed=7,
        weighted=[
            {"provider": "local", "data-path": str(two_folders / "one"), "weight": 0.25},
            {"data_path": str(two_folders / "two"), "token-size": 4, "weight": 0.75},
        ],
    )
    with build_weighted(options, PROVIDERS) as mix:
        assert mix.num_sequences == 40 + 80
        assert mix.counts == [30, 90]
        tags = [s.input_ids[0] for s in mix.get_samples(range(120))]
        assert tags.count(1) == 30
        assert "#1 local 25.0%" in mix.describe()
        again = build_weighted(options, PROVIDERS)
        assert [s.input_ids[0] for s in again.get_samples(range(120))] == tags


def test_sample_provider_in_a_mixture(two_folders):
    options = make_options(
        sequence_length=10,
        weighted=[{"provider": "sample"}, {"data-path": str(two_folders / "one")}],
    )
    with build_weighted(options, PROVIDERS) as mix:
        assert mix.counts[1] == 40
        assert len(mix.get_samples(range(5))[0].input_ids) == 10


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (None, r"needs \[\[weighted\]\] tables"),
        ("oops", "expected"),
        ([{"provider": "sample", "weight": 1}, {"provider": "sample"}], "every .* or none"),
        (
            [{"provider": "sample", "data-pth": "x"}],
            "unknown key 'data-pth'; did you mean data-path",
        ),
        ([{"weight": 1}], "give a provider"),
        ([{"provider": "weighted"}], "cannot contain another"),
        ([{"provider": "sample", "weight": "lots"}], "is not a number"),
        ([{"provider": "sample", "sequence-length": "long"}], "is not an integer"),
        ([{"provider": "nosuch"}], "unknown data provider 'nosuch'"),
    ],
)
def test_bad_tables(entries, message, monkeypatch):
    monkeypatch.setenv("PSYCHE_LOAD_PLUGINS", "")  # no installed plugins: hermetic
    with pytest.raises(PsycheError, match=message):
        build_weighted(make_options(sequence_length=10, weighted=entries), PROVIDERS)


def test_failure_closes_the_providers_already_built(monkeypatch):
    built = []

    def factory(options):
        built.append(Constant(0, 3))
        return built[-1]

    module = sys.modules["psyche_data.weighted"]
    monkeypatch.setattr(module, "_factory", lambda name: factory)
    entries = [{"provider": "a", "weight": 1}, {"provider": "b", "weight": -1}]
    with pytest.raises(PsycheError):
        build_weighted(make_options(weighted=entries), PROVIDERS)
    assert built and all(p.closed for p in built)
