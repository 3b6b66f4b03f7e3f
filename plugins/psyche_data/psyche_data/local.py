"""The ``local`` provider: a folder of token files, memory-mapped."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psyche_core.data import TokenizedData
from psyche_core.errors import PsycheError
from psyche_data.index import (
    ArrayDataProvider,
    SequenceIndex,
    is_data_file,
    sample_dtype,
    token_dtype,
)


def walk_data_files(root: Path) -> list[str]:
    """The data files under the folder ``root``, as posix paths relative to it, sorted.

    Searched recursively; hidden files and folders are skipped, symlinked files are followed.
    Sorting by path makes the order the same on every machine.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and is_data_file(name):
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def find_data_files(path: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """``(folder, data files)`` for ``path``, a folder (see :func:`walk_data_files`) or a file."""
    root = Path(path).expanduser()
    if root.is_file():
        _check_raw(root)
        return root.parent, [root.name]
    if not root.exists():
        raise PsycheError(f"data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise PsycheError(f"data path {str(root)!r} is neither a file nor a folder")
    found = walk_data_files(root)
    if not found:
        what = "is empty" if not any(root.iterdir()) else "has no .ds, .bin or .npy files"
        raise PsycheError(f"data folder {str(root)!r} {what}")
    for name in found:
        _check_raw(root / name)
    return root, found


def _check_raw(path: Path) -> None:
    """Refuse a NumPy-format ``.npy`` (its header would be read as tokens)."""
    if path.suffix.lower() != ".npy":
        return
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise PsycheError(
                f"{path} is a NumPy-format array (it has a header), not raw tokens; write it "
                "with array.tofile() or rename it .npy.bak to skip it"
            )


class LocalDataProvider(ArrayDataProvider):
    """Sequences of ``sequence_length`` tokens from every data file under ``path``.

    Files are memory-mapped when first read; samples come back as int32 arrays (int64 for
    4-byte tokens).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sequence_length: int,
        token_size: int = 2,
        seed: int | None = None,
        document_boundaries: bool = False,
    ) -> None:
        self.dtype = token_dtype(token_size)
        self.root, names = find_data_files(path)
        self.paths = [self.root / name for name in names]
        sizes = [p.stat().st_size for p in self.paths]
        self.index = SequenceIndex(names, sizes, token_size, sequence_length, seed)
        self._maps: dict[int, np.memmap] = {}
        self._lock = threading.Lock()
        self.document_starts = _document_starts(self.paths) if document_boundaries else None

    @property
    def num_sequences(self) -> int:
        return self.index.num_sequences

    def _map(self, file: int) -> np.ndarray:
        mapped = self._maps.get(file)
        if mapped is None:
            with self._lock:
                mapped = self._maps.get(file)
                if mapped is None:
                    try:
                        mapped = np.memmap(self.paths[file], dtype=self.dtype, mode="r")
                    except OSError as exc:
                        raise PsycheError(f"cannot read {self.paths[file]}: {exc}") from None
                    self._maps[file] = mapped
        return mapped

    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` array (int32 for 2-byte
        tokens, int64 for 4-byte ones)."""
        where = self.index.locate(ids)
        length = self.index.sequence_length
        out = np.empty((len(where.file), length), dtype=sample_dtype(self.index.token_size))
        for row, (file, offset) in enumerate(zip(where.file.tolist(), where.token_offset.tolist())):
            out[row] = self._map(file)[offset : offset + length]
        return out

    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        if self.document_starts is None:
            return super().get_samples(ids)
        where = self.index.locate(ids)
        length = self.index.sequence_length
        samples = []
        pieces = zip(self.read(ids), where.file.tolist(), where.token_offset.tolist())
        for row, file, offset in pieces:
            lengths = _piece_lengths(self.document_starts[file], offset, length)
            positions = np.concatenate([np.arange(n) for n in lengths])
            samples.append(TokenizedData(row, position_ids=positions, sequence_lengths=lengths))
        return samples

    def describe(self) -> str:
        index = self.index
        return (
            f"local: {len(index.names)} files in {self.root}, {index.num_tokens:,} tokens, "
            f"{index.num_sequences:,} sequences of {index.sequence_length}"
            + ("" if index.seed is None else f", shuffled with seed {index.seed}")
            + ("" if self.document_starts is None else ", documents kept apart")
        )

    def close(self) -> None:
        with self._lock:
            self._maps.clear()  # numpy unmaps a file when its last array goes


def build_local(options, providers=None) -> LocalDataProvider:
    """Factory for ``--data-provider local``."""
    if not options.data_path:
        raise PsycheError("the local data provider needs --data-path (a folder of token files)")
    return LocalDataProvider(
        options.data_path,
        options.sequence_length,
        options.token_size,
        options.seed,
        document_boundaries=options.data_document_boundaries,
    )


def _document_starts(paths: list[Path]) -> list[np.ndarray]:
    """Each file's document start offsets, from the ``.idx`` files ``psyche data tokenize``
    writes beside its shards."""
    from psyche_data.tokenize import read_document_starts

    starts = []
    for path in paths:
        found = read_document_starts(path)
        if found is None:
            raise PsycheError(
                f"{path} has no document index ({path.name}.idx); --data-document-boundaries "
                "needs shards written by `psyche data tokenize`, or leave it off"
            )
        starts.append(found)
    return starts


def _piece_lengths(starts: np.ndarray, offset: int, length: int) -> list[int]:
    """The lengths of the document pieces in tokens ``offset .. offset+length-1``."""
    first = np.searchsorted(starts, offset, side="right")
    last = np.searchsorted(starts, offset + length, side="left")
    cuts = [0, *(starts[first:last] - offset).tolist(), length]
    return np.diff(cuts).tolist()
