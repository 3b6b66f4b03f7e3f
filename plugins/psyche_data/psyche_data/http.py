"""The ``http`` provider: token files read with HTTP range requests.

Samples are addressed exactly as by the ``local`` provider (:mod:`psyche_data.index`), so the
same files and seed give the same samples. A batch's samples are fetched together:

1. samples that sit next to each other in one file (an unshuffled run) become one range;
2. a file's ranges go out several per request (``Range: bytes=a-b,c-d,...``, answered as
   ``multipart/byteranges``) where the server supports it, else one request per range;
3. the requests run concurrently on kept-alive connections;
4. while the caller works on a batch, the next one (guessed from the stride between the last
   two calls) is already being fetched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.fetch import RangeClient
from psyche_data.index import ArrayDataProvider, SequenceIndex, sample_dtype, token_dtype
from psyche_data.sources import RemoteFile, resolve_sources

MAX_REQUEST_BYTES = 8 << 20  # most bytes asked for in one request
MAX_RANGES = 256  # most ranges in one multi-range request (servers cap header sizes)
MIN_RANGES = 128  # fewer per request: more requests cost more CPU than they overlap


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
        self.connections = connections
        # per origin: None = not known yet, False = answers one range per request
        self._multi_range: dict[str, bool | None] = {}
        self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="psyche-http-ahead")
        self._ahead: tuple[tuple[int, int], Future] | None = None
        self._ahead_lock = threading.Lock()
        self._last_start: int | None = None

    @property
    def num_sequences(self) -> int:
        return self.index.num_sequences

    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` array (int32 for 2-byte
        tokens, int64 for 4-byte ones)."""
        key = (ids.start, ids.stop) if isinstance(ids, range) and ids.step == 1 else None
        future = None
        with self._ahead_lock:
            if self._ahead is not None and key is not None and self._ahead[0] == key:
                future = self._ahead[1]
                self._ahead = None
        batch = None
        if future is not None:
            with contextlib.suppress(Exception):  # read it again below, and let that raise
                batch = future.result()
        if batch is None:
            batch = self._fetch(ids)
        if key is not None:  # fetched while the caller works on this batch
            self._read_ahead(key)
        return batch

    def _read_ahead(self, key: tuple[int, int]) -> None:
        """Start fetching the batch that probably comes next (same size, same stride)."""
        start, stop = key
        stride = stop - start if self._last_start is None else start - self._last_start
        self._last_start = start
        if stride <= 0 or stop - start <= 0 or start + stride + (stop - start) > self.num_sequences:
            return
        following = (start + stride, stop + stride)
        with self._ahead_lock:
            if self._ahead is not None and self._ahead[0] == following:
                return
            if self._ahead is not None:
                self._ahead[1].cancel()
            future = self._ahead_pool.submit(self._fetch, range(*following))
            self._ahead = (following, future)

    def _fetch(self, ids: Sequence[int]) -> np.ndarray:
        where = self.index.locate(ids)
        length = self.index.sequence_length
        # each distinct sample once, in file order, so that samples adjacent in a file merge
        # into one range even when a shuffled batch lists them apart
        keys = np.stack([where.file, where.token_offset], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        out = np.empty((len(unique), length), dtype=sample_dtype(self.index.token_size))
        size = self.dtype.itemsize
        runs = _runs(unique[:, 0], unique[:, 1], length, MAX_REQUEST_BYTES // size)
        # [(file, [(byte start, byte length, rows)...])]: the ranges each request asks for
        requests = self._plan(runs, length * size)
        calls = [(self.urls[f], [(s, n) for s, n, _ in r]) for f, r in requests]
        answers = self.client.map(self._request, calls)
        retry = []
        for (file, ranges), answer in zip(requests, answers):
            if answer is None:  # no multi-range support after all: one request per range
                retry.extend((file, part) for part in ranges)
                continue
            for (_, _, rows), data in zip(ranges, answer):
                out[rows] = np.frombuffer(data, dtype=self.dtype).reshape(-1, length)
        if retry:
            calls = [(self.urls[f], s, n) for f, (s, n, _) in retry]
            for (_, (_, _, rows)), data in zip(retry, self.client.map(self.client.read, calls)):
                out[rows] = np.frombuffer(data, dtype=self.dtype).reshape(-1, length)
        return out[inverse.reshape(-1)]

    def _request(self, url: str, ranges: list[tuple[int, int]]) -> list[memoryview] | None:
        if len(ranges) == 1:
            return [memoryview(self.client.read(url, *ranges[0]))]
        answer = self.client.read_ranges(url, ranges)
        if answer is None:
            self._multi_range[_origin(url)] = False
        return answer

    def _plan(self, runs, sample_bytes: int) -> list[tuple[int, list[tuple[int, int, slice]]]]:
        """Group the runs of each file into requests of ``MIN_RANGES`` to ``MAX_RANGES`` ranges
        (at most ``MAX_REQUEST_BYTES``) where the server may answer several, else one each.

        More, smaller requests would keep more connections busy, but on loopback and a few
        cores each request costs more CPU than its overlap saves (benchmarks/data_http.py)."""
        by_file: dict[int, list[tuple[int, int, slice]]] = {}
        for file, offset, count, rows in runs:
            start = offset * self.dtype.itemsize
            by_file.setdefault(file, []).append((start, count * sample_bytes, rows))
        requests = []
        per_request = min(MAX_RANGES, max(MIN_RANGES, -(-len(runs) // self.connections)))
        for file, ranges in by_file.items():
            if self._multi_range.get(_origin(self.urls[file])) is False:
                requests.extend((file, [r]) for r in ranges)
                continue
            group: list[tuple[int, int, slice]] = []
            size = 0
            for part in ranges:
                if group and (len(group) >= per_request or size + part[1] > MAX_REQUEST_BYTES):
                    requests.append((file, group))
                    group, size = [], 0
                group.append(part)
                size += part[1]
            requests.append((file, group))
        return requests

    def describe(self) -> str:
        index = self.index
        return (
            f"http: {self.description}, {len(index.names)} files, {index.num_tokens:,} tokens, "
            f"{index.num_sequences:,} sequences of {index.sequence_length}"
            + ("" if index.seed is None else f", shuffled with seed {index.seed}")
        )

    def close(self) -> None:
        self._ahead_pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _runs(
    files: np.ndarray, offsets: np.ndarray, length: int, max_tokens: int
) -> list[tuple[int, int, int, slice]]:
    """Consecutive samples that follow each other in one file, as single ranges: ``(file,
    token offset, number of samples, rows of the batch)``."""
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
    timeout = options.data_http_timeout
    sources = resolve_sources(
        options.data_url, options.data_url_start, options.data_url_count, timeout
    )
    return HttpDataProvider(
        sources.files,
        options.sequence_length,
        options.token_size,
        options.seed,
        connections=options.data_http_connections,
        timeout=timeout,
        retries=options.data_http_retries,
        headers=sources.headers,
        description=sources.description,
    )
