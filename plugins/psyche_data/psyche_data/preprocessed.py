"""The ``preprocessed`` provider: parquet files of ready-made samples (needs pyarrow).

Each row is one sample: an ``inputs`` (or ``input_ids``) list of exactly ``sequence_length``
tokens, and optionally ``labels`` (-100 = no loss) and ``position_ids`` of the same length and
``sequence_lengths`` (the packed documents' lengths), as in Psyche's preprocessed format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError
from psyche_data.index import permutation, sample_ids

_INPUT_COLUMNS = ("inputs", "input_ids")
_OPTIONAL_COLUMNS = ("labels", "position_ids", "sequence_lengths")


def find_parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PsycheError(f"data path {str(root)!r} does not exist")
    files = sorted(
        p for p in root.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise PsycheError(f"data folder {str(root)!r} has no .parquet files")
    return files


class _ListColumn:
    """A parquet list column as flat values plus row offsets."""

    def __init__(self, chunked) -> None:
        array = chunked.combine_chunks()
        self.offsets = np.asarray(array.offsets, dtype=np.int64)
        self.values = np.asarray(array.values.to_numpy(zero_copy_only=False), dtype=np.int64)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, r: int) -> np.ndarray:
        return self.values[self.offsets[r] : self.offsets[r + 1]]


class PreprocessedDataProvider(DataProvider):
    """All rows of the parquet files under ``path`` (sorted by path), held in memory."""

    def __init__(
        self, path: str | os.PathLike[str], sequence_length: int, seed: int | None = None
    ) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PsycheError(
                "the preprocessed provider needs pyarrow: pip install 'psyche-data[parquet]'"
            ) from None
        self.files = find_parquet_files(path)
        try:
            tables = [pq.read_table(f) for f in self.files]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except (OSError, pa.ArrowException) as exc:
            raise PsycheError(f"cannot read parquet data under {path}: {exc}") from None
        names = table.column_names
        inputs = next((c for c in _INPUT_COLUMNS if c in names), None)
        if inputs is None:
            raise PsycheError(
                f"parquet data under {path} has no 'inputs' or 'input_ids' column "
                f"(columns: {', '.join(names)})"
            )
        self.columns = {"input_ids": _ListColumn(table[inputs])}
        for name in _OPTIONAL_COLUMNS:
            if name in names:
                self.columns[name] = _ListColumn(table[name])
        for name in ("input_ids", "labels", "position_ids"):
            column = self.columns.get(name)
            if column is None:
                continue
            bad = np.flatnonzero(column.lengths() != sequence_length)
            if bad.size:
                raise PsycheError(
                    f"parquet row {int(bad[0])}: {name} has {int(column.lengths()[bad[0]])} "
                    f"tokens, not the sequence length {sequence_length}"
                )
        self.num_rows = table.num_rows
        if self.num_rows == 0:
            raise PsycheError(f"parquet data under {path} has no rows")
        self.sequence_length = sequence_length
        self.seed = seed
        self._order = None if seed is None else permutation(self.num_rows, seed)

    @property
    def num_sequences(self) -> int:
        return self.num_rows

    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        rows = sample_ids(ids, self.num_rows)
        if self._order is not None:
            rows = self._order[rows]
        samples = []
        for r in rows.tolist():
            parts = {name: column.row(r) for name, column in self.columns.items()}
            lengths = parts.get("sequence_lengths")
            samples.append(
                TokenizedData(
                    input_ids=parts["input_ids"],
                    labels=parts.get("labels"),
                    position_ids=parts.get("position_ids"),
                    sequence_lengths=None if lengths is None else lengths.tolist(),
                )
            )
        return samples

    def describe(self) -> str:
        return (
            f"preprocessed: {len(self.files)} parquet files, {self.num_rows:,} samples of "
            f"{self.sequence_length} tokens ({', '.join(self.columns)})"
        )


def build_preprocessed(options, providers=None) -> PreprocessedDataProvider:
    """Factory for ``--data-provider preprocessed``."""
    if not options.data_path:
        raise PsycheError("the preprocessed data provider needs --data-path (parquet files)")
    return PreprocessedDataProvider(options.data_path, options.sequence_length, options.seed)
