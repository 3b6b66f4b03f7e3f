"""The ``http`` provider: token files read with HTTP range requests.

Samples are addressed exactly as by the ``local`` provider (:mod:`psyche_data.index`), so the
same files and seed give the same samples. A batch's samples are fetched concurrently; samples
that sit next to each other in one file (an unshuffled run) are fetched as one request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.fetch import RangeClient
from psyche_data.index import ArrayDataProvider, SequenceIndex, sample_dtype, token_dtype
from psyche_data.sources import RemoteFile, resolve_sources

MAX_REQUEST_BYTES = 8 << 20  # longest run of adjacent samples fetched in one request


class HttpDataProvider(ArrayDataProvider):
    """Sequences of ``sequence_length`` tokens from remote token files.

    Args:
        files: the files in reading order; sizes that are None are asked of the server, once.
        sequence_length, token_size, seed: as for the local provider.
        connections, timeout, retries, backoff: see :class:`~psyche_data.fetch.RangeClient`.
        headers: extra headers for every request (e.g. ``Authorization``).
    """

    def __init__(
        self,
        files: Sequence[RemoteFile],
        sequence_length: int,
        token_size: int = 2,
        seed: int | None = None,
        *,
        connections: int = 16,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        headers: dict[str, str] | None = None,
        description: str | None = None,
    ) -> None:
        self.dtype = token_dtype(token_size)
        if not files:
            raise PsycheError("the http data provider got no URLs")
        self.client = RangeClient(connections, timeout, retries, backoff, headers)
        try:
            unknown = [i for i, f in enumerate(files) if f.size is None]
            found = self.client.map(self.client.size, [(files[i].url,) for i in unknown])
            sizes = [f.size for f in files]
            for i, size in zip(unknown, found):
                sizes[i] = size
            self.urls = [f.url for f in files]
            self.index = SequenceIndex(self.urls, sizes, token_size, sequence_length, seed)
        except BaseException:
            self.client.close()
            raise
        self.description = description or f"{len(files)} URLs"

    @property
    def num_sequences(self) -> int:
        return self.index.num_sequences

    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` array (int32 for 2-byte
        tokens, int64 for 4-byte ones)."""
        where = self.index.locate(ids)
        length = self.index.sequence_length
        out = np.empty((len(where.file), length), dtype=sample_dtype(self.index.token_size))
        runs = _runs(
            where.file, where.token_offset, length, MAX_REQUEST_BYTES // self.dtype.itemsize
        )
        size = self.dtype.itemsize
        calls = [
            (self.urls[file], offset * size, count * length * size)
            for file, offset, count, _ in runs
        ]
        for (_, _, count, rows), data in zip(runs, self.client.map(self.client.read, calls)):
            tokens = np.frombuffer(data, dtype=self.dtype).reshape(count, length)
            out[rows] = tokens
        return out

    def describe(self) -> str:
        index = self.index
        return (
            f"http: {self.description}, {len(index.names)} files, {index.num_tokens:,} tokens, "
            f"{index.num_sequences:,} sequences of {index.sequence_length}"
            + ("" if index.seed is None else f", shuffled with seed {index.seed}")
        )

    def close(self) -> None:
        self.client.close()


def _runs(
    files: np.ndarray, offsets: np.ndarray, length: int, max_tokens: int
) -> list[tuple[int, int, int, slice]]:
    """Group consecutive samples that follow each other in one file into single requests:
    ``(file, token offset, number of samples, rows of the batch)``."""
    runs: list[tuple[int, int, int, slice]] = []
    per_run = max(1, max_tokens // length)
    start = 0
    n = len(files)
    files_list, offsets_list = files.tolist(), offsets.tolist()
    for row in range(1, n + 1):
        if (
            row < n
            and files_list[row] == files_list[start]
            and offsets_list[row] == offsets_list[row - 1] + length
            and row - start < per_run
        ):
            continue
        runs.append((files_list[start], offsets_list[start], row - start, slice(start, row)))
        start = row
    return runs


def build_http(options, providers=None) -> HttpDataProvider:
    """Factory for ``--data-provider http``."""
    timeout = _option(options, "data_http_timeout", 30.0)
    sources = resolve_sources(
        options.data_url,
        _option(options, "data_url_start", 0),
        options.get("data_url_count"),
        timeout,
    )
    return HttpDataProvider(
        sources.files,
        options.sequence_length,
        options.token_size,
        options.seed,
        connections=_option(options, "data_http_connections", 16),
        timeout=timeout,
        retries=_option(options, "data_http_retries", 5),
        headers=sources.headers,
        description=sources.description,
    )


def _option(options, key: str, default):
    value = options.get(key)
    return default if value is None else value
