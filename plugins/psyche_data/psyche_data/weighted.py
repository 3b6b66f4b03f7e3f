"""The ``weighted`` provider: a seeded mixture of other providers.

Configured from the run TOML (``data-provider = "weighted"`` plus ``[[weighted]]`` tables, see
docs/data.md). One epoch has as many samples as all the mixed providers together (as in
Psyche); provider ``j`` gets ``count_j`` of them in proportion to its weight (largest-remainder
rounding), the ``k``-th of which is its sample ``k mod num_sequences_j``. The providers' samples
are interleaved evenly (each provider's ``k``-th sample sits at time ``(k + 1/2) / count_j``;
ties go to the earlier provider), so every stretch of ids holds about the right proportions;
with a seed the whole epoch is then permuted (:func:`psyche_data.index.permutation`).
Everything is integer or exactly-rounded float64 arithmetic: the same on every machine.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError
from psyche_core.registry import Registry
from psyche_core.specs import DataProviderSpec
from psyche_data.index import permutation, sample_ids

_SHUFFLE_SALT = 0x5EED_3170  # keeps the mixture's shuffle apart from its providers' shuffles


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder; ties to the first)."""
    weight_sum = math.fsum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in by_remainder[: total - sum(counts)]:
        counts[j] += 1
    return counts


class WeightedDataProvider(DataProvider):
    """Mix ``providers`` by ``weights`` (None: in proportion to their sizes)."""

    def __init__(
        self,
        providers: Sequence[DataProvider],
        weights: Sequence[float] | None = None,
        seed: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if not providers:
            raise PsycheError("the weighted data provider needs at least one provider")
        self.providers = list(providers)
        self.names = list(names or [type(p).__name__ for p in providers])
        lengths = [p.num_sequences for p in self.providers]
        if weights is None:
            weights = [float(n) for n in lengths]
        if len(weights) != len(self.providers):
            raise PsycheError("the weighted data provider needs one weight per provider")
        for name, weight in zip(self.names, weights):
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise PsycheError(f"weighted: the weight of {name} must be a number >= 0")
        if math.fsum(weights) <= 0:
            raise PsycheError("weighted: the weights add up to 0")
        for name, weight, n in zip(self.names, weights, lengths):
            if weight > 0 and n == 0:
                raise PsycheError(f"weighted: {name} has no samples but a weight of {weight}")
        self.weights = [float(w) for w in weights]
        self.seed = seed
        total = sum(lengths)
        self.counts = allocate(total, self.weights)

        times = [(np.arange(c, dtype=np.float64) + 0.5) / c for c in self.counts if c]
        owners = [np.full(c, j, dtype=np.int32) for j, c in enumerate(self.counts) if c]
        draws = [np.arange(c, dtype=np.int64) % lengths[j] for j, c in enumerate(self.counts) if c]
        order = np.argsort(np.concatenate(times), kind="stable")
        if seed is not None:
            order = order[permutation(total, seed, _SHUFFLE_SALT)]
        self._provider = np.concatenate(owners)[order]
        self._sample = np.concatenate(draws)[order]

    @property
    def num_sequences(self) -> int:
        return len(self._provider)

    def locate(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(provider index, sample id in that provider)`` for each of ``ids``."""
        array = sample_ids(ids, self.num_sequences)
        return self._provider[array], self._sample[array]

    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        providers, samples = self.locate(ids)
        result: list[TokenizedData | None] = [None] * len(providers)
        for j in np.unique(providers).tolist():
            rows = np.flatnonzero(providers == j)
            got = self.providers[j].get_samples(samples[rows].tolist())
            if len(got) != len(rows):
                raise PsycheError(
                    f"weighted: {self.names[j]} returned {len(got)} samples for {len(rows)} ids"
                )
            for row, sample in zip(rows.tolist(), got):
                result[row] = sample
        return result  # type: ignore[return-value]

    def describe(self) -> str:
        total = sum(self.counts)
        parts = ", ".join(
            f"{name} {count / total:.1%}" for name, count in zip(self.names, self.counts)
        )
        return f"weighted: {total:,} sequences from {parts}"

    def close(self) -> None:
        for provider in self.providers:
            provider.close()


def build_weighted(options, providers: Registry[DataProviderSpec]) -> WeightedDataProvider:
    """Factory for ``--data-provider weighted`` (reads the ``[[weighted]]`` TOML tables); each
    table's provider comes from ``providers``, the registry of installed data providers."""
    entries = options.weighted
    if not entries:
        raise PsycheError(
            "the weighted data provider needs [[weighted]] tables in the run TOML "
            "(see docs/data.md)"
        )
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise PsycheError("weighted: expected [[weighted]] tables (an array of tables)")
    given = ["weight" in e for e in entries]
    if any(given) and not all(given):
        raise PsycheError("weighted: give every [[weighted]] table a weight, or none of them")
    built: list[DataProvider] = []
    names: list[str] = []
    try:
        for number, entry in enumerate(entries, 1):
            name, sub_options = _entry_options(options, entry, number, providers)
            built.append(providers.get(name).load()(sub_options, providers))
            names.append(f"#{number} {name}")
        weights = [float(e["weight"]) for e in entries] if all(given) else None
        return WeightedDataProvider(built, weights, options.seed, names)
    except BaseException:
        for provider in built:
            provider.close()
        raise


def _entry_options(
    options, entry: Mapping[str, Any], number: int, providers: Registry[DataProviderSpec]
):
    """The provider name and the options of one ``[[weighted]]`` table: the run's options with
    the table's keys on top."""
    where = f"[[weighted]] #{number}"
    changes: dict[str, Any] = {}
    for raw_key, value in entry.items():
        key = raw_key.replace("-", "_")
        if key in ("provider", "weight"):
            continue
        if key in ("weighted", "data_provider") or key not in options:
            known = [k.replace("_", "-") for k in options if k not in ("weighted",)]
            close = difflib.get_close_matches(raw_key.replace("_", "-"), known, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PsycheError(f"{where}: unknown key {raw_key!r}{hint}")
        changes[key] = _coerce(key, value, where)
    name = entry.get("provider")
    if name is None:
        implied = [
            spec.name
            for _, spec, _ in providers.items()
            if spec.implied_by and changes.get(spec.implied_by)
        ]
        if not implied:
            raise PsycheError(f"{where}: give a provider (or a data-path or data-url)")
        name = implied[0]
    if name == "weighted":
        raise PsycheError(f"{where}: a weighted provider cannot contain another one")
    if "weight" in entry:
        weight = entry["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise PsycheError(f"{where}: weight = {weight!r} is not a number")
    return name, options.replace(data_provider=name, weighted=None, **changes)


def _coerce(key: str, value: Any, where: str) -> Any:
    from psyche_core.options import CORE_OPTIONS, coerce
    from psyche_data.plugin import OPTIONS

    for spec in (*CORE_OPTIONS, *OPTIONS):
        if spec.key == key:
            return coerce(spec, value, where)
    return value
