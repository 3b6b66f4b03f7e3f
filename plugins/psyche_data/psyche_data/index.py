"""How samples are addressed in a set of token files, shared by the local and HTTP providers.

A token file is raw little-endian tokens of ``token_size`` bytes (2 or 4), no header. Each file is
cut into sequences of ``sequence_length`` consecutive tokens starting every ``sequence_length``
tokens; the tail that does not fill a whole sequence is dropped. Sequences are numbered file by
file in file order, then (with a seed) permuted by :func:`permutation`, which depends only on
``(n, seed)`` and integer arithmetic, so every machine and every numpy version agrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psyche_core.errors import PsycheError
from psyche_core.indexing import (  # noqa: F401  (this module's names since 0.1)
    ArrayDataProvider,
    hash_stream,
    permutation,
    sample_ids,
    splitmix64,
)

DATA_EXTENSIONS = (".ds", ".bin", ".npy")
TOKEN_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


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
