"""Packing tokenized documents into rows of ``sequence_length`` tokens, and writing them as the
preprocessed parquet (``inputs``, ``labels``, ``position_ids``, ``sequence_lengths``).

Methods: ``ffd`` (first-fit-decreasing: longest first, each into the first row with room; the
fewest rows), ``greedy`` (in input order, a new row when the next one does not fit) and
``random`` (a seeded shuffle, then greedy). A row's unused tail is padding: ``pad_id`` tokens,
labels -100, counted as one more entry of ``sequence_lengths`` so the lengths always sum to the
row length and position ids restart at every document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psyche_core.data import IGNORE_INDEX
from psyche_core.errors import PsycheError
from psyche_data.index import permutation

METHODS = ("ffd", "greedy", "random")


@dataclass
class PackStats:
    documents: int
    rows: int
    tokens: int  # document tokens placed in rows
    truncated: int
    dropped: int
    sequence_length: int

    @property
    def fill_ratio(self) -> float:
        return self.tokens / max(1, self.rows * self.sequence_length)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "documents": self.documents,
            "rows": self.rows,
            "tokens": self.tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "sequence_length": self.sequence_length,
            "fill_ratio": round(self.fill_ratio, 6),
        }


def pack(lengths: Sequence[int], capacity: int, method: str = "ffd", seed: int = 0):
    """Rows of document indices (each row's lengths sum to at most ``capacity``)."""
    if method not in METHODS:
        raise PsycheError(f"packing must be one of {', '.join(METHODS)}, got {method!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > capacity:
        raise PsycheError(f"a document of {int(lengths.max())} tokens exceeds the row ({capacity})")
    if method == "ffd":
        return _first_fit(np.argsort(-lengths, kind="stable"), lengths, capacity)
    order = np.arange(len(lengths)) if method == "greedy" else permutation(len(lengths), seed)
    rows: list[list[int]] = []
    room = 0
    for doc in order.tolist():
        if not rows or lengths[doc] > room:
            rows.append([])
            room = capacity
        rows[-1].append(doc)
        room -= int(lengths[doc])
    return rows


def _first_fit(order: np.ndarray, lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First fit in ``order``: a max-tree over the rows' free room finds the first row with
    enough room in O(log n) (a linear scan would be quadratic in the number of rows)."""
    size = 1
    while size < max(1, len(order)):
        size *= 2
    tree = np.full(2 * size, capacity, dtype=np.int64)
    rows: list[list[int]] = []
    for doc in order.tolist():
        need = int(lengths[doc])
        node = 1
        while node < size:  # descend to the leftmost leaf with room >= need
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(doc)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows


def build_rows(
    documents: Sequence[tuple[np.ndarray, np.ndarray]],
    rows: list[list[int]],
    capacity: int,
    pad_id: int,
) -> dict[str, list]:
    """The parquet columns for ``rows`` of ``documents`` (``(input_ids, labels)`` pairs)."""
    columns: dict[str, list] = {n: [] for n in ("inputs", "labels", "position_ids")}
    columns["sequence_lengths"] = []
    for row in rows:
        inputs = [documents[d][0] for d in row]
        labels = [documents[d][1] for d in row]
        lengths = [len(x) for x in inputs]
        pad = capacity - sum(lengths)
        if pad:
            inputs.append(np.full(pad, pad_id, dtype=np.int32))
            labels.append(np.full(pad, IGNORE_INDEX, dtype=np.int32))
            lengths.append(pad)
        columns["inputs"].append(np.concatenate(inputs).astype(np.int32))
        columns["labels"].append(np.concatenate(labels).astype(np.int32))
        positions = np.concatenate([np.arange(n) for n in lengths])
        columns["position_ids"].append(positions.astype(np.int32))
        columns["sequence_lengths"].append(np.asarray(lengths, dtype=np.int64))
    return columns


def write_parquet(columns: dict[str, list], path: Path) -> None:
    """Write the columns with the schema of Psyche's preprocessed parquet (large lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"inputs": pa.int32(), "labels": pa.int32(), "position_ids": pa.int32()}
    types["sequence_lengths"] = pa.int64()
    arrays = {}
    for name, value_type in types.items():
        rows = columns[name]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        flat = np.concatenate(rows) if rows else np.empty(0)
        values = pa.array(flat.astype(value_type.to_pandas_dtype()), type=value_type)
        arrays[name] = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    pq.write_table(pa.table(arrays), path)
