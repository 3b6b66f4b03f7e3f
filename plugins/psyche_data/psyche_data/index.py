"""How samples are addressed in a set of token files, shared by the local and HTTP providers.

A token file is raw little-endian tokens of ``token_size`` bytes (2 or 4), no header. Each file is
cut into sequences of ``sequence_length`` consecutive tokens starting every ``sequence_length``
tokens; the tail that does not fill a whole sequence is dropped. Sequences are numbered file by
file in file order, then (with a seed) permuted by :func:`permutation`, which depends only on
``(n, seed)`` and integer arithmetic, so every machine and every numpy version agrees.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError

DATA_EXTENSIONS = (".ds", ".bin", ".npy")
TOKEN_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1


def token_dtype(token_size: object) -> np.dtype:
    """The numpy dtype of a token of ``token_size`` bytes (2 or 4)."""
    if isinstance(token_size, bool) or token_size not in TOKEN_DTYPES:
        raise PsycheError(f"token size must be 2 or 4 bytes, got {token_size!r}")
    return TOKEN_DTYPES[token_size]  # type: ignore[index]


def sample_dtype(token_size: int) -> np.dtype:
    """The dtype samples come back in: int32 holds every 2-byte token, int64 every 4-byte one."""
    return np.dtype(np.int32 if token_size == 2 else np.int64)


def is_data_file(name: str) -> bool:
    return name.lower().endswith(DATA_EXTENSIONS)


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


@dataclass(frozen=True)
class Location:
    """Where a batch of samples lives: a file index and a token offset per sample."""

    file: np.ndarray
    token_offset: np.ndarray


class SequenceIndex:
    """Maps sample ids to ``(file, token offset)`` for files of known sizes.

    Args:
        names: one name per file, for error messages.
        sizes: the byte size of each file.
        token_size: bytes per token, 2 or 4.
        sequence_length: tokens per sample.
        seed: ``None`` keeps file order; an int shuffles all sequences of all files together.
    """

    def __init__(
        self,
        names: Sequence[str],
        sizes: Sequence[int],
        token_size: int,
        sequence_length: int,
        seed: int | None,
    ) -> None:
        token_dtype(token_size)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
            raise PsycheError(f"sequence length must be an integer, got {sequence_length!r}")
        if sequence_length < 1:
            raise PsycheError(f"sequence length must be at least 1, got {sequence_length}")
        if not names:
            raise PsycheError("no data files")
        for name, size in zip(names, sizes):
            if size % token_size:
                raise PsycheError(
                    f"{name}: size {size} bytes is not a multiple of the token size "
                    f"({token_size} bytes); is --token-size right?"
                )
        self.names = list(names)
        self.sizes = [int(s) for s in sizes]
        self.token_size = token_size
        self.sequence_length = sequence_length
        self.seed = seed
        self.tokens_per_file = np.array([s // token_size for s in self.sizes], dtype=np.int64)
        self.sequences_per_file = self.tokens_per_file // sequence_length
        self.num_sequences = int(self.sequences_per_file.sum())
        if self.num_sequences == 0:
            raise PsycheError(
                f"sequence length {sequence_length} is longer than every data file "
                f"(the largest of {len(names)} holds {int(self.tokens_per_file.max())} tokens)"
            )
        # first global sequence number of each file
        self._starts = np.concatenate([[0], np.cumsum(self.sequences_per_file)[:-1]])
        self._order = None if seed is None else permutation(self.num_sequences, seed)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens_per_file.sum())

    def locate(self, ids: Sequence[int]) -> Location:
        """The file and first token of each sample in ``ids`` (checked against the end)."""
        array = sample_ids(ids, self.num_sequences)
        sequence = array if self._order is None else self._order[array].astype(np.int64)
        file = np.searchsorted(self._starts, sequence, side="right") - 1
        # files with no sequences share a start with the next file; searchsorted's "right"
        # side already picks the last of equal starts, which is the one that has sequences
        offset = (sequence - self._starts[file]) * self.sequence_length
        return Location(file.astype(np.int64), offset.astype(np.int64))


class ArrayDataProvider(DataProvider):
    """A provider whose samples are the rows of ``read(ids)``, a 2-D token array."""

    @abstractmethod
    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` integer array."""

    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        return [TokenizedData(input_ids=row) for row in self.read(ids)]
