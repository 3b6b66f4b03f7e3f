"""Byte ranges over HTTP: pooled keep-alive connections, concurrent requests, retries.

Every request either returns exactly the bytes asked for or ends in a :class:`PsycheError`
naming the URL and the byte range: timeouts, refused or dropped connections, 5xx answers and
short bodies are retried with exponential backoff; a 404, a 416 or a server that ignores
``Range`` (a 200 with the whole file) fail at once, since retrying cannot help.
"""

from __future__ import annotations

import functools
import http.client
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from psyche_core.errors import PsycheError
from psyche_data.connections import ConnectionProblem, Connections, UntrustedServer, describe

T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$")
_MIN_RATE = 256 * 1024  # bytes/s a body must at least arrive at, on top of the timeout
_READ = 1 << 20  # bytes read at a time (the deadline is checked between reads)
# ``psyche data serve``'s answer to several whole ranges, when asked for it with ``Accept``:
# their bytes back to back, in the order asked, with no part headers. The client knows every
# range's length, so the parts need no framing, and the answer can be read straight into the
# caller's array (a shuffled batch is hundreds of 4 KiB ranges; each part parsed and copied
# was most of the client's CPU). Other servers ignore the type and answer multipart.
CONCATENATED = "application/vnd.psyche.concatenated-byteranges"
_ACCEPT_RANGES = f"{CONCATENATED}, multipart/byteranges, */*;q=0.5"
_IGNORES_RANGE = (
    "the server ignores Range requests (it answered 200 with the whole file); serve the files "
    "with `psyche data serve` or another range-capable server"
)


class Retryable(Exception):
    """A failure worth another try (the message says what happened)."""


class Fatal(Exception):
    """A failure that another try will not fix."""


def _status_error(response: http.client.HTTPResponse) -> Exception:
    status = response.status
    if status == 404:
        return Fatal("404 Not Found")
    if status == 416:
        found = response.getheader("content-range", "?")
        return Fatal(
            f"416 Range Not Satisfiable (Content-Range: {found}); the file is shorter than expected"
        )
    if status >= 500 or status in (408, 429):
        return Retryable(f"HTTP {status} {response.reason}")
    return Fatal(f"HTTP {status} {response.reason}")


class RangeClient:
    """Reads byte ranges of URLs, many at once.

    Args:
        connections: the most requests in flight (and pooled keep-alive connections).
        timeout: seconds allowed for connecting and between two reads of an answer; a whole
            answer must also arrive within ``timeout`` plus its size at 256 KiB/s.
        retries: how many times a failed request is tried again.
        backoff: seconds before the first retry; doubled for each next one (at most 10 s).
        headers: extra headers for every request (e.g. a Hugging Face token).
    """

    def __init__(
        self,
        connections: int = 16,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if connections < 1:
            raise PsycheError(f"HTTP connections must be at least 1, got {connections}")
        if not timeout or timeout <= 0:
            raise PsycheError(f"HTTP timeout must be positive, got {timeout}")
        if retries < 0:
            raise PsycheError(f"HTTP retries must be 0 or more, got {retries}")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = backoff
        sent = {"Accept-Encoding": "identity", "User-Agent": "psyche-data", **(headers or {})}
        self._connections = Connections(self.timeout, sent)
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="psyche-http")

    # -- one request ---------------------------------------------------------------------------

    def read(
        self, url: str, start: int, length: int, into: memoryview | None = None
    ) -> bytearray | memoryview:
        """Exactly ``length`` bytes of ``url`` from byte ``start`` (read straight into
        ``into`` when given, which is returned)."""
        end = start + length - 1
        if into is not None and into.nbytes != length:
            raise ValueError("`into` must hold exactly the range's bytes")
        return self._retry(
            f"{url} bytes {start}-{end}", lambda: self._read_once(url, start, length, into)
        )

    def size(self, url: str) -> int:
        """The byte size of ``url``, from a one-byte range request (which also checks that the
        server honours ``Range``)."""
        return self._retry(f"{url} (finding its size)", lambda: self._size_once(url))

    def _read_once(
        self, url: str, start: int, length: int, into: memoryview | None
    ) -> bytearray | memoryview:
        end = start + length - 1
        deadline = time.monotonic() + self.timeout + length / _MIN_RATE
        with self._connections.get(url, {"Range": f"bytes={start}-{end}"}) as r:
            whole_file = r.getheader("content-length") == str(length)
            if r.status == 200 and not (start == 0 and whole_file):
                raise Fatal(_IGNORES_RANGE)  # (a 200 for exactly the whole file is fine)
            if r.status not in (200, 206):
                raise _status_error(r)
            got = _parse_content_range(r.getheader("content-range"))
            if r.status == 206 and (got is None or got[0] != start or got[1] != end):
                raise Fatal(
                    f"the server answered with Content-Range "
                    f"{r.getheader('content-range')!r}, not bytes {start}-{end}"
                )
            return _read_exactly(r, length, deadline, "asked for", into)

    def read_ranges_into(
        self, url: str, ranges: Sequence[tuple[int, int]], into: memoryview
    ) -> bool:
        """Fill ``into`` with the bytes of each ``(start, length)`` of ``url``, back to back,
        from one multi-range request.

        Returns False (``into`` unspecified) when the server does not answer several ranges at
        once (it sent the whole file, or fewer ranges than asked); the caller then asks for
        them one by one.
        """
        if into.nbytes != sum(length for _, length in ranges):
            raise ValueError("`into` must hold exactly the ranges' bytes")
        first, last = ranges[0][0], ranges[-1][0] + ranges[-1][1] - 1
        return self._retry(
            f"{url} {len(ranges)} ranges in bytes {first}-{last}",
            lambda: self._read_ranges_once(url, ranges, into),
        )

    def _read_ranges_once(
        self, url: str, ranges: Sequence[tuple[int, int]], into: memoryview
    ) -> bool:
        wanted = into.nbytes
        spec = ",".join(f"{start}-{start + length - 1}" for start, length in ranges)
        deadline = time.monotonic() + self.timeout + wanted / _MIN_RATE
        asked = {"Range": f"bytes={spec}", "Accept": _ACCEPT_RANGES}
        with self._connections.get(url, asked) as r:
            if r.status == 200:
                return False  # the whole file: closing now drops it unread
            if r.status != 206:
                raise _status_error(r)
            kind = r.getheader("content-type", "")
            if kind == CONCATENATED:  # psyche's own answer: no parts to find
                _read_exactly(r, wanted, deadline, "asked for", into)
                return True
            # each part carries ~150 bytes of headers; anything much bigger is not our answer
            limit = wanted + 512 * len(ranges) + 4096
            body = _read_body(r, limit, deadline)
            if kind.lower().startswith("multipart/byteranges"):
                parts = _multipart_parts(body, _boundary(kind))
            else:
                got = _parse_content_range(r.getheader("content-range"))
                if got is None or got[0] is None:
                    raise Fatal(f"a 206 answer without a usable Content-Range ({kind})")
                parts = [(got[0], memoryview(body))]
            return _cut_into(parts, ranges, into)

    def _size_once(self, url: str) -> int:
        with self._connections.get(url, {"Range": "bytes=0-0"}) as r:
            if r.status == 200:
                raise Fatal(_IGNORES_RANGE)
            if r.status not in (206, 416):
                raise _status_error(r)
            got = _parse_content_range(r.getheader("content-range"))
            if got is None or got[2] is None:
                raise Fatal(
                    f"cannot tell the file size from Content-Range {r.getheader('content-range')!r}"
                )
            r.read()  # the one byte (or the 416's note), so the connection can be reused
            return got[2]

    def _retry(self, what: str, attempt: Callable[[], T]) -> T:
        tries = self.retries + 1
        for number in range(1, tries + 1):
            try:
                return attempt()
            except (Fatal, UntrustedServer) as exc:
                raise PsycheError(f"{what}: {exc}") from None
            except (Retryable, ConnectionProblem, OSError, http.client.HTTPException) as exc:
                reason = describe(exc)
                if number == tries:
                    raise PsycheError(
                        f"{what}: {reason} (gave up after {tries} "
                        f"attempt{'s' if tries > 1 else ''})"
                    ) from None
                time.sleep(min(self.backoff * 2 ** (number - 1), 10.0))
        raise AssertionError("unreachable")

    # -- many requests -------------------------------------------------------------------------

    def map(self, function: Callable[..., T], calls: Sequence[tuple]) -> list[T]:
        """``[function(*args) for args in calls]``, run concurrently on the connection pool.

        The calling thread makes the first call itself rather than wait idle (on a few cores
        each hand-off to a pool thread costs more than the call). The first failure cancels
        what has not started and is raised.
        """
        if not calls:
            return []
        futures = [self._pool.submit(function, *args) for args in calls[1:]]
        try:
            first = function(*calls[0])
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                for other in pending:
                    other.cancel()
                wait(pending)
                raise future.exception()  # type: ignore[misc]
        return [first] + [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._connections.close()


def _read_body(response: http.client.HTTPResponse, limit: int, deadline: float) -> bytearray:
    declared = response.getheader("content-length")
    if declared is not None and int(declared) > limit:
        raise Fatal(f"the server answered with {declared} bytes for ranges totalling less")
    if declared is None:  # chunked: read until the end, within the limit
        body = bytearray()
        while chunk := response.read(_READ):
            body += chunk
            if len(body) > limit:
                raise Fatal("the server sent more than the ranges asked for")
            if time.monotonic() > deadline:
                raise Retryable(f"too slow: {len(body)} bytes in time")
        return body
    return _read_exactly(response, int(declared), deadline, "it declared")


def _read_exactly(
    response: http.client.HTTPResponse,
    size: int,
    deadline: float,
    promised: str,
    into: memoryview | None = None,
) -> bytearray | memoryview:
    """Exactly ``size`` bytes of ``response``'s body, read straight into ``into`` (or a new
    buffer); more is :class:`Fatal`, fewer or too slow :class:`Retryable`."""
    declared = response.length  # what the answer's Content-Length promised (None: chunked)
    if declared is not None and declared > size:
        raise Fatal(f"the server sent more than the {size} bytes {promised}")
    body = bytearray(size) if into is None else into
    view = memoryview(body)
    filled = 0
    while filled < size:
        got = response.readinto(view[filled : filled + _READ])
        if not got:
            break
        filled += got
        if time.monotonic() > deadline:
            raise Retryable(f"too slow: {filled} of {size} bytes in time")
    if filled < size:
        if declared is not None and filled < declared:
            raise Retryable(
                f"the server closed the connection early (got {filled} of {declared} bytes)"
            )
        raise Retryable(f"short read: got {filled} of {size} bytes")
    if response.read(1):
        raise Fatal(f"the server sent more than the {size} bytes {promised}")
    return body


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.strip().lower() == "boundary" and value:
            return value.strip().strip('"').encode()
    raise Fatal(f"multipart answer without a boundary ({content_type!r})")


@functools.lru_cache(maxsize=8)
def _part_head(boundary: bytes) -> re.Pattern[bytes]:
    """A part's delimiter and headers, its ``Content-Range`` among them (any line, any case),
    up to the blank line that starts its data."""
    return re.compile(
        b"--"
        + re.escape(boundary)
        + rb"[ \t]*\r\n(?:[^\r\n]*\r\n)*?content-range:[ \t]*bytes[ \t]+(\d+)-(\d+)[ \t]*/[^\r\n]*"
        + rb"\r\n(?:[^\r\n]+\r\n)*\r\n",
        re.I,
    )


def _multipart_parts(body: bytearray, boundary: bytes) -> list[tuple[int, memoryview]]:
    """``(first byte, data)`` of each part of a ``multipart/byteranges`` body.

    Each part's length comes from its ``Content-Range``, so binary data that happens to
    contain the boundary cannot cut a part short. Each part's head is one anchored match in
    place (a shuffled batch is hundreds of 4 KiB parts: per-part work must stay tiny).
    """
    view = memoryview(body)
    marker = b"--" + boundary
    head = _part_head(boundary)
    parts = []
    at = body.find(marker)
    while at >= 0:
        found = head.match(body, at)
        if found is None:
            if body.startswith(b"--", at + len(marker)):
                return parts  # the closing boundary
            if body.find(b"\r\n\r\n", at) < 0:
                break  # the answer ends inside a part's headers
            raise Fatal("a multipart part without a usable Content-Range")
        first, last = int(found[1]), int(found[2])
        start = found.end()
        stop = start + last - first + 1
        if stop > len(body):
            raise Retryable(f"short read: a part of bytes {first}-{last} is cut off")
        parts.append((first, view[start:stop]))
        at = body.find(marker, stop)
    raise Retryable("short read: the multipart answer ends without its closing boundary")


def _cut_into(
    parts: list[tuple[int, memoryview]], ranges: Sequence[tuple[int, int]], into: memoryview
) -> bool:
    """Copy each wanted range from the parts that hold it (servers may merge or reorder
    ranges) into ``into``, back to back; False when a range is missing, i.e. the server
    answered only some of them."""
    count = len(parts)
    at = 0
    for number, (start, length) in enumerate(ranges):
        if number < count:  # usually part i answers range i exactly
            first, data = parts[number]
            if first == start and len(data) == length:
                into[at : at + length] = data
                at += length
                continue
        for first, data in parts:  # else search them all
            if first <= start and start + length <= first + len(data):
                into[at : at + length] = data[start - first : start - first + length]
                break
        else:
            return False
        at += length
    return True


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    if not value:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last, total = match.groups()
    return (
        None if first is None else int(first),
        None if last is None else int(last),
        None if total == "*" else int(total),
    )
