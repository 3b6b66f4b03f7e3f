"""The ``http`` provider: token files read with HTTP range requests.

Samples are addressed exactly as by the ``local`` provider (:mod:`psyche_data.index`), so the
same files and seed give the same samples. A batch's samples are fetched together:

1. samples that sit next to each other in one file (an unshuffled run) become one range;
2. a file's ranges go out several per request (``Range: bytes=a-b,c-d,...``, answered as
   ``multipart/byteranges``, or by ``psyche data serve`` back to back, read straight into the
   batch) where the server supports it, else one request per range;
3. the requests run concurrently on kept-alive connections;
4. while the caller works on a batch, the next two (guessed from the stride between the last
   two calls) are already being fetched.

A server that answers a multi-range request with the whole file (a plain static server, a CDN)
is noticed on its first such answer, whose body is dropped unread, and remembered per origin.
One request per sample costs it about a millisecond of CPU on each side, so for such origins
the provider moves more bytes per request instead:

5. the samples of the coming calls (the same stride again, up to ``cache_megabytes`` of
   samples) are fetched together in the background, half a window at a time, so that samples
   of many steps share requests;
6. wanted bytes closer than ``HOLE_BYTES`` apart in a file are read as one range (the bytes in
   between are read and dropped), up to ``MAX_REQUEST_BYTES`` per request;
7. only the wanted samples are kept, until their call comes (``bytes_useful`` and
   ``bytes_fetched`` count what was wanted and what crossed the network).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.fetch import RangeClient
from psyche_data.index import (
    ArrayDataProvider,
    SequenceIndex,
    sample_dtype,
    sample_ids,
    token_dtype,
)
from psyche_data.plugin import DEFAULT_CACHE_MEGABYTES
from psyche_data.sources import RemoteFile, resolve_sources

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8 << 20  # most bytes asked for in one request
# batches fetched ahead of their call: two keep the server busy with one while the client
# takes in the other (with one, each batch waits a whole round trip)
READ_AHEAD_CALLS = 2
MAX_RANGES = 256  # most ranges in one multi-range request (servers cap header sizes)
MIN_RANGES = 128  # fewer per request: more requests cost more CPU than they overlap
# Servers without multi-range: read through a gap this small rather than send another request.
# A request costs about as much time as moving this many bytes (loopback and a Python server:
# ~1 ms against ~0.5 GB/s; a CDN: tens of ms of latency, spread over the concurrent connections).
HOLE_BYTES = 512 << 10
# Large answers in flight at once: on a few cores more streams only fight over the GIL (16
# streams of 8 MiB moved a fill 2-6x slower than 4 on the benchmark's 2 cores).
BULK_STREAMS = 4
BULK_BYTES = 1 << 20  # an answer this large takes one of the BULK_STREAMS


class HttpDataProvider(ArrayDataProvider):
    """Sequences of ``sequence_length`` tokens from remote token files.

    Args:
        files: the files in reading order; sizes that are None are asked of the server, once.
        sequence_length, token_size, seed: as for the local provider.
        connections, timeout, retries, backoff: see :class:`~psyche_data.fetch.RangeClient`.
        headers: extra headers for every request (e.g. ``Authorization``).
        cache_megabytes: memory for samples read ahead of their call from servers without
            multi-range support (more reads further ahead, so more samples share a request).
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
        cache_megabytes: float = DEFAULT_CACHE_MEGABYTES,
    ) -> None:
        self.dtype = token_dtype(token_size)
        if not files:
            raise PsycheError("the http data provider got no URLs")
        if cache_megabytes < 0:
            raise PsycheError(f"HTTP cache must be 0 MiB or more, got {cache_megabytes}")
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
        self._ahead_pool = ThreadPoolExecutor(
            READ_AHEAD_CALLS, thread_name_prefix="psyche-http-ahead"
        )
        # a window is filled half at a time: one fill in flight keeps the cache in its bound
        self._fill_pool = ThreadPoolExecutor(1, thread_name_prefix="psyche-http-fill")
        self._ahead: dict[tuple[int, int], Future] = {}  # (start, stop) of a call -> its fetch
        self._ahead_lock = threading.Lock()
        self._last_start: int | None = None
        # servers without multi-range: samples read ahead, by id, until their call takes them
        self.cache_bytes = int(cache_megabytes * (1 << 20))
        self._sample_bytes = sequence_length * self.dtype.itemsize
        self._store: dict[int, np.ndarray] = {}
        self._pending: dict[int, Future] = {}
        self._window: tuple[int, int, int] | None = None  # (size, stride, next start to fetch)
        self._lock = threading.Lock()
        self._bulk = threading.Semaphore(BULK_STREAMS)
        self.bytes_useful = 0  # bytes of the samples asked of the server
        self.bytes_fetched = 0  # bytes the server sent for them (ranges read through holes)

    @property
    def num_sequences(self) -> int:
        return self.index.num_sequences

    def read(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids`` as one ``(len(ids), sequence_length)`` array (int32 for 2-byte
        tokens, int64 for 4-byte ones)."""
        key = (ids.start, ids.stop) if isinstance(ids, range) and ids.step == 1 else None
        stride = None if key is None else self._stride(key[0])
        future = None
        if key is not None:
            with self._ahead_lock:
                future = self._ahead.pop(key, None)
        batch = None
        if future is not None:
            with contextlib.suppress(Exception):  # read it again below, and let that raise
                batch = future.result()
        if batch is None:
            batch = self._read_windowed(ids) if self._windowed() else self._fetch(ids)
        if key is not None:  # fetched while the caller works on this batch
            if self._windowed() and stride is not None:
                with self._ahead_lock:  # (batches fetched ahead before the server was known)
                    for stale in self._ahead.values():
                        stale.cancel()
                    self._ahead.clear()
                self._read_window_ahead(key[0], key[1] - key[0], stride)
            else:  # (a window on a guessed stride could read a cache full of wrong samples)
                self._read_ahead(key, key[1] - key[0] if stride is None else stride)
        return batch

    def _windowed(self) -> bool:
        """Whether some server answers one range per request (read many calls ahead)."""
        return any(known is False for known in self._multi_range.values())

    def _stride(self, start: int) -> int | None:
        """How far apart the calls are (None until there have been two)."""
        stride = None if self._last_start is None else start - self._last_start
        self._last_start = start
        return stride

    def _read_ahead(self, key: tuple[int, int], stride: int) -> None:
        """Start fetching the ``READ_AHEAD_CALLS`` batches that probably come next (same size,
        same stride), and stop those that no longer look likely."""
        start, stop = key
        following = []
        if stride > 0 and stop > start:
            for calls in range(1, READ_AHEAD_CALLS + 1):
                if stop + calls * stride > self.num_sequences:
                    break
                following.append((start + calls * stride, stop + calls * stride))
        with self._ahead_lock:
            for old in [k for k in self._ahead if k not in following]:
                self._ahead.pop(old).cancel()
            for coming in following:
                if coming not in self._ahead:
                    self._ahead[coming] = self._ahead_pool.submit(self._fetch, range(*coming))

    # -- servers without multi-range: many calls' samples per request --------------------------

    def _read_windowed(self, ids: Sequence[int]) -> np.ndarray:
        """The samples at ``ids``: those read ahead from the store (waiting for them if they
        are on their way), the rest fetched now."""
        array = sample_ids(ids, self.num_sequences).tolist()
        rows: dict[int, np.ndarray] = {}
        waiting: dict[int, Future] = {}
        with self._lock:
            for i in array:
                if i in self._store:
                    rows[i] = self._store.pop(i)
                elif i in self._pending:
                    waiting[i] = self._pending[i]
        for i, future in waiting.items():
            with contextlib.suppress(Exception):  # fetched again below, and that raises
                future.result()
            with self._lock:
                row = self._store.pop(i, None)
            if row is not None:
                rows[i] = row
        missing = sorted({i for i in array if i not in rows})
        if missing:
            for i, row in zip(missing, self._fetch(missing)):
                rows[i] = row
        out = np.empty((len(array), self.index.sequence_length), sample_dtype(self.dtype.itemsize))
        for n, i in enumerate(array):
            out[n] = rows[i]
        return out

    def _read_window_ahead(self, start: int, size: int, stride: int) -> None:
        """Fetch the samples of the calls after this one (same size, same stride) in the
        background: as many calls as ``cache_megabytes`` holds, half of them at a time once
        half have been taken, so each fetch spans many steps and fills its requests."""
        if size <= 0 or stride <= 0:
            return
        capacity = max(2 * size, self.cache_bytes // self._sample_bytes)  # samples
        calls = max(2, capacity // size)  # calls held ahead
        with self._lock:
            window = self._window
            if (
                window is None
                or window[:2] != (size, stride)
                or not start < window[2] <= start + stride * (calls + 1)
                or (window[2] - start) % stride
            ):
                window = (size, stride, start + stride)  # a new pattern: start over
            fetch_from = window[2]
            if fetch_from - start > stride * (calls // 2):
                self._window = window
                return  # more than half a window is on its way already
            ids: list[int] = []
            at = fetch_from
            while at <= start + stride * calls and at + size <= self.num_sequences:
                ids.extend(i for i in range(at, at + size) if i not in self._store)
                at += stride
            self._window = (size, stride, at)
            ids = [i for i in dict.fromkeys(ids) if i not in self._pending]
            if not ids:
                return
            future = self._fill_pool.submit(self._fill, ids, capacity)
            for i in ids:
                self._pending[i] = future

    def _fill(self, ids: list[int], capacity: int) -> None:
        try:
            # kept as the file's tokens (half an int32 copy's memory); widened when taken
            raw, where = self._fetch_raw(ids)
            with self._lock:
                for i, row in zip(ids, where.tolist()):
                    self._store[i] = raw[row]
                while len(self._store) > capacity:  # guessed wrong: drop the oldest
                    del self._store[next(iter(self._store))]
        finally:
            with self._lock:
                for i in ids:
                    self._pending.pop(i, None)

    # -- fetching --------------------------------------------------------------------------------

    def _fetch(self, ids: Sequence[int]) -> np.ndarray:
        raw, where = self._fetch_raw(ids)
        return raw[where].astype(sample_dtype(self.dtype.itemsize))

    def _fetch_raw(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The distinct samples of ``ids`` as the file holds their tokens, in file order, and
        for each id its row there."""
        where = self.index.locate(ids)
        length = self.index.sequence_length
        # each distinct sample once, in file order, so that samples adjacent in a file merge
        # into one range even when a shuffled batch lists them apart
        files = where.file.astype(np.int64)
        keys = (files << 40) | where.token_offset.astype(np.int64)  # one sortable number each
        unique, inverse = np.unique(keys, return_inverse=True)
        size = self.dtype.itemsize
        runs = _runs(unique >> 40, unique & ((1 << 40) - 1), length, MAX_REQUEST_BYTES // size)
        sample_bytes = length * size
        # the answers' bytes land here as they are, in file order; widened once at the end
        raw = np.empty((len(unique), length), self.dtype)
        raw_bytes = memoryview(raw).cast("B")

        def request(
            file: int,
            ranges: list[tuple[int, int, list[tuple[slice, int, int]]]],
            rows: slice | None,
        ):
            """Fetch one request's ranges into ``raw`` (so at most ``connections`` answers are
            held at once); the runs to ask for again when the server answered the whole file.
            ``rows``: the rows of ``raw`` the ranges fill back to back, or None for one range
            read through the gaps between its samples."""
            url = self.urls[file]
            wanted = [(s, n) for s, n, _ in ranges]
            bulk = sum(n for _, n in wanted) >= BULK_BYTES
            with self._bulk if bulk else contextlib.nullcontext():
                if rows is None:
                    ((start, count, pieces),) = ranges
                    data = memoryview(self.client.read(url, start, count))
                elif not self._read_into(url, wanted, raw_bytes, rows, sample_bytes):
                    return [  # no multi-range support after all
                        (file, start // size, rows.stop - rows.start, rows)
                        for start, _, pieces in ranges
                        for rows, _, _ in pieces
                    ]
            with self._lock:
                self.bytes_fetched += sum(n for _, n in wanted)
            if rows is None:  # only the wanted samples are kept
                for piece, at, n in pieces:
                    first = piece.start * sample_bytes
                    raw_bytes[first : first + n] = data[at : at + n]
            return []

        for _ in range(2):  # once more if a server turned out to answer one range per request
            runs = [
                run
                for redo in self.client.map(request, self._plan(runs, sample_bytes))
                for run in redo
            ]
            if not runs:
                break
        with self._lock:
            self.bytes_useful += len(unique) * sample_bytes
        return raw, inverse.reshape(-1)

    def _read_into(
        self,
        url: str,
        ranges: list[tuple[int, int]],
        raw_bytes: memoryview,
        rows: slice,
        sample_bytes: int,
    ) -> bool:
        """Read ``ranges`` of ``url`` straight into ``rows`` of the batch, which they fill back
        to back; False (and the origin remembered) when the server does not answer several
        ranges at once."""
        into = raw_bytes[rows.start * sample_bytes : rows.stop * sample_bytes]
        if len(ranges) == 1:
            self.client.read(url, *ranges[0], into=into)
            return True
        if self.client.read_ranges_into(url, ranges, into):
            return True
        self._multi_range[_origin(url)] = False
        return False

    def _plan(
        self, runs, sample_bytes: int
    ) -> list[tuple[int, list[tuple[int, int, list[tuple[slice, int, int]]]], slice | None]]:
        """The requests for ``runs``: ``(file, [(byte start, byte length, [(rows, offset in the
        range, bytes)...])...], rows)``, where ``rows`` are the rows the answer fills back to
        back (None when ranges are read through holes).

        Where the server may answer several ranges, a file's runs go ``MIN_RANGES`` to
        ``MAX_RANGES`` per request (at most ``MAX_REQUEST_BYTES``): more, smaller requests would
        keep more connections busy, but on loopback and a few cores each request costs more CPU
        than its overlap saves (benchmarks/data_http.py). Where it answers one range per request,
        runs closer than ``HOLE_BYTES`` become one range, read through the gap."""
        by_file: dict[int, list[tuple[int, int, slice]]] = {}
        for file, offset, count, rows in runs:
            start = offset * self.dtype.itemsize
            by_file.setdefault(file, []).append((start, count * sample_bytes, rows))
        requests = []
        per_request = min(MAX_RANGES, max(MIN_RANGES, -(-len(runs) // self.connections)))
        for file, ranges in by_file.items():
            if self._multi_range.get(_origin(self.urls[file])) is False:
                requests.extend((file, [merged], None) for merged in _read_through(ranges))
                continue
            # runs come sorted by file and offset, each its rows of ``raw`` in that order, so
            # a request's runs fill consecutive rows, from its first run's to its last run's
            group: list[tuple[int, int, list[tuple[slice, int, int]]]] = []
            size = first_row = last_row = 0
            for start, length, rows in ranges:
                if group and (len(group) >= per_request or size + length > MAX_REQUEST_BYTES):
                    requests.append((file, group, slice(first_row, last_row)))
                    group, size = [], 0
                if not group:
                    first_row = rows.start
                group.append((start, length, [(rows, 0, length)]))
                size += length
                last_row = rows.stop
            requests.append((file, group, slice(first_row, last_row)))
        return requests

    def describe(self) -> str:
        index = self.index
        return (
            f"http: {self.description}, {len(index.names)} files, {index.num_tokens:,} tokens, "
            f"{index.num_sequences:,} sequences of {index.sequence_length}"
            + ("" if index.seed is None else f", shuffled with seed {index.seed}")
        )

    def drain(self) -> None:
        """Wait until the reads started ahead of their calls have finished (benchmarks count
        their time)."""
        with self._lock:
            futures = set(self._pending.values())
            with self._ahead_lock:
                futures.update(self._ahead.values())
        for future in futures:
            with contextlib.suppress(Exception):  # its call fetches again, and raises
                future.result()

    def close(self) -> None:
        self._ahead_pool.shutdown(wait=True, cancel_futures=True)
        self._fill_pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        self._store.clear()
        if self.bytes_fetched > self.bytes_useful > 0:
            logger.info(
                "http data: fetched %.1f MB for %.1f MB of samples (%.1fx, reading through gaps "
                "of servers without multi-range)",
                self.bytes_fetched / 1e6,
                self.bytes_useful / 1e6,
                self.bytes_fetched / self.bytes_useful,
            )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _read_through(
    ranges: list[tuple[int, int, slice]],
) -> list[tuple[int, int, list[tuple[slice, int, int]]]]:
    """``(byte start, byte length, rows)`` of one file, in byte order, merged into ranges of at
    most ``MAX_REQUEST_BYTES`` wherever the gap is at most ``HOLE_BYTES``."""
    merged: list[tuple[int, int, list[tuple[slice, int, int]]]] = []
    first = end = 0
    pieces: list[tuple[slice, int, int]] = []
    for start, length, rows in ranges:
        if pieces and (start - end > HOLE_BYTES or start + length - first > MAX_REQUEST_BYTES):
            merged.append((first, end - first, pieces))
            pieces = []
        if not pieces:
            first = start
        pieces.append((rows, start - first, length))
        end = start + length
    if pieces:
        merged.append((first, end - first, pieces))
    return merged


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
        cache_megabytes=options.data_http_cache_megabytes,
    )
