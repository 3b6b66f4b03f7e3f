"""Addressing samples: seeded hashing and permutations that never change between numpy
versions or machines, id checks, and a provider base whose samples are rows of one array.

Shared by the built-in ``sample`` provider and the data plugins.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_stream(seed: int, salt: int, index: np.ndarray) -> np.ndarray:
    """Deterministic 64-bit pseudo-random values for ``index`` under ``(seed, salt)``.

    ``splitmix64(key + index * golden)``: distinct indices give distinct values (the map is a
    bijection of uint64), and the result depends on nothing but the three integers.
    """
    key = splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    key = splitmix64(key ^ np.uint64(salt & _MASK64))
    with np.errstate(over="ignore"):
        return splitmix64(key + np.asarray(index, dtype=np.uint64) * _GOLDEN)


def permutation(n: int, seed: int, salt: int = 0) -> np.ndarray:
    """A seeded permutation of ``0..n-1``: the indices sorted by their hash.

    Unlike ``numpy.random.Generator.permutation`` this cannot change between numpy versions.
    """
    keys = hash_stream(seed, salt, np.arange(n, dtype=np.uint64))
    order = np.argsort(keys, kind="stable")
    return order.astype(np.int32 if n < 2**31 else np.int64)


def sample_ids(ids: Sequence[int], num_sequences: int) -> np.ndarray:
    """``ids`` (a range or any sequence of ints) as an int64 array, checked against the end."""
    if isinstance(ids, range):
        array = np.arange(ids.start, ids.stop, ids.step, dtype=np.int64)
    else:
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise PsycheError(f"sample id {low} is negative")
        if high >= num_sequences:
            raise PsycheError(
                f"sample id {high} is past the end: the data has {num_sequences} sequences "
                f"(ids 0..{num_sequences - 1})"
            )
    return array


class ArrayDataProvider(DataProvider):
    """A provider whose samples are the rows of ``read(ids)``, a 2-D token array."""

    @abstractmethod
    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` integer array."""

    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        return [TokenizedData(input_ids=row) for row in self.read(ids)]
