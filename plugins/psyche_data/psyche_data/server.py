"""``psyche data serve``: a small threaded HTTP/1.1 server for a folder of token files.

It answers ``GET`` and ``HEAD`` with byte ranges (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``;
206 with ``Content-Range``, 416 when unsatisfiable), several at once as a standard
``multipart/byteranges`` answer (``bytes=0-9,100-199``: one part per range, in the order
asked), or, to a client that asks for it with ``Accept`` (psyche's own), as the ranges' bytes
back to back; keeps connections alive, and never serves anything outside its folder (``..``,
absolute paths, hidden files and symlinks that lead out are refused). ``GET /`` returns a JSON
index of the data files, ``{"files": [{"path": "a.ds", "size": 123}, ...]}``, in the order the
``local`` provider reads them, which is how the ``http`` provider reads a whole served folder
from one URL.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from psyche_core.errors import PsycheError
from psyche_data.fetch import CONCATENATED
from psyche_data.local import walk_data_files

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_ONE_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_EXPLICIT_RANGES = re.compile(r"\d+-\d+(?:,\d+-\d+)*")
_RANGE_SEPARATORS = re.compile(r"[-,]")
_CHUNK = 1 << 20
_GATHER_BYTES = 64 << 20  # multipart answers up to this size are built in one buffer
_RESOLVED_SECONDS = 2.0  # how long a URL path's resolution to a file is trusted
MAX_RANGES = 4096  # more ranges than this in one request are answered with the whole file
BOUNDARY = "psyche-data-byteranges"


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | str | None:
    """The inclusive byte ranges a ``Range`` header asks of a ``size``-byte file, in order.

    ``None`` sends the whole file (no header, a malformed one, or more than ``MAX_RANGES``, as
    RFC 9110 allows); ``"unsatisfiable"`` when no range is (a 416); unsatisfiable ranges among
    satisfiable ones are left out, as the RFC says.
    """
    if not header:
        return None
    spec = _range_spec(header)
    if spec is None:
        return None
    if _EXPLICIT_RANGES.fullmatch(spec):
        return _explicit_ranges(spec, size)
    return _each_range(spec.split(","), size)


def _range_spec(header: str) -> str | None:
    """What follows ``bytes=`` in a ``Range`` header; None where the whole file is sent
    (another unit, nothing asked, more than ``MAX_RANGES``)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip() or spec.count(",") >= MAX_RANGES:
        return None
    return spec


def _explicit_pairs(spec: str) -> list[tuple[int, int]]:
    """The ``(first, last)`` pairs of a spec of plain ``first-last,first-last,...``, what range
    clients send: one split instead of a regex match per range (a shuffled batch asks for
    hundreds)."""
    numbers = list(map(int, _RANGE_SEPARATORS.split(spec)))
    return list(zip(numbers[::2], numbers[1::2]))


def _explicit_ranges(spec: str, size: int) -> list[tuple[int, int]] | str | None:
    """``parse_ranges`` of a spec of plain ``first-last`` pairs."""
    pairs = _explicit_pairs(spec)
    if any(last < first for first, last in pairs):
        return None  # malformed: the whole file, as for any malformed range
    ranges = [(first, min(last, size - 1)) for first, last in pairs if first < size]
    return ranges or "unsatisfiable"


def _each_range(parts: list[str], size: int) -> list[tuple[int, int]] | str | None:
    ranges = []
    for part in parts:
        match = _ONE_RANGE.match(part)
        if match is None:
            return None
        one = _bounds(*match.groups(), size)
        if one is None:
            return None
        if one != "unsatisfiable":
            ranges.append(one)
    return ranges or "unsatisfiable"


def whole_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The ranges of a ``Range`` header of plain ``first-last`` pairs when every one lies
    whole inside a ``size``-byte file (what psyche's client asks for); else None."""
    spec = _range_spec(header)
    if spec is None or not _EXPLICIT_RANGES.fullmatch(spec):
        return None
    pairs = _explicit_pairs(spec)
    if any(last < first or last >= size for first, last in pairs):
        return None
    return pairs


def _total(ranges: list[tuple[int, int]]) -> int:
    """The bytes in inclusive ``(first, last)`` ranges."""
    return sum(last for _, last in ranges) - sum(first for first, _ in ranges) + len(ranges)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The inclusive byte range a ``Range`` header asks of a ``size``-byte file.

    Returns ``None`` to send the whole file (no header, or one this server ignores as RFC 9110
    allows: malformed or several ranges), ``"unsatisfiable"`` for a 416, else ``(first, last)``.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    return _bounds(*match.groups(), size)


def _bounds(first: str, last: str, size: int) -> tuple[int, int] | str | None:
    """``first-last`` of one range spec (either may be empty) against a ``size``-byte file."""
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def data_index(root: Path) -> list[dict[str, object]]:
    """The data files a server of ``root`` offers, with their sizes."""
    real_root = os.path.realpath(root)
    files = []
    for name in walk_data_files(root):
        real = os.path.realpath(root / name)
        if _inside(real, real_root) and os.path.isfile(real):
            files.append({"path": name, "size": os.path.getsize(real)})
    return files


def _inside(real: str, real_root: str) -> bool:
    return real.startswith(real_root.rstrip(os.sep) + os.sep)


def _gather(
    fd: int,
    prefix: bytes,
    ranges: list[tuple[int, int]],
    length: int,
    heads: Iterable[bytes] = itertools.repeat(b""),
    tail: bytes = b"",
) -> bytearray:
    """The answer's ``prefix`` (its headers) and its ``length``-byte body in one buffer: each
    range read straight into its place after its head (a multipart part's; none for ranges back
    to back), then ``tail``. A shuffled batch is hundreds of 4 KiB ranges: one write, no
    per-range copies."""
    body = bytearray(len(prefix) + length)
    view = memoryview(body)
    view[: len(prefix)] = prefix
    at = len(prefix)
    for head, (first, last) in zip(heads, ranges):
        view[at : at + len(head)] = head
        at += len(head)
        count = last - first + 1
        if os.preadv(fd, [view[at : at + count]], first) != count:
            raise ConnectionAbortedError("the file shrank while it was being served")
        at += count
    view[at:] = tail
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "psyche-data"
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the
    # body until the client's delayed ACK (~40 ms per request)
    disable_nagle_algorithm = True
    server: DataServer

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def log_message(self, format: str, *args: object) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # (called for every request: format only if shown)
            logger.debug("%s %s", self.address_string(), format % args)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/":
            self._send_index(body)
            return
        target = self._resolve(path)
        if target is None:
            self._send_status(HTTPStatus.NOT_FOUND, body)
            return
        try:
            file = open(target, "rb")  # noqa: SIM115 (closed by the with block below)
        except OSError:
            self._send_status(HTTPStatus.NOT_FOUND, body)
            return
        with file:
            size = os.fstat(file.fileno()).st_size
            header = self.headers.get("Range")
            if self._asks_concatenated(header):
                whole = whole_ranges(header, size)
                if whole is not None and (length := _total(whole)) <= _GATHER_BYTES:
                    self._send_concatenated(file, whole, length, body)
                    return
            wanted = self._wanted(header, size)
            if isinstance(wanted, list):
                self._send_parts(file, wanted, size, body)
                return
            if wanted == "unsatisfiable":
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if wanted is None:
                first, last = 0, size - 1
                self.send_response(HTTPStatus.OK)
            else:
                first, last = wanted
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            count = last - first + 1
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.end_headers()
            if body and count:
                self.connection.sendfile(file, first, count)

    def _wanted(self, header: str | None, size: int):
        """One range ``(first, last)``, several (a list), None or ``"unsatisfiable"``."""
        if header is None or "," not in header:
            return parse_range(header, size)
        if not self.server.multi_range:
            return None  # a plain server: the whole file
        ranges = parse_ranges(header, size)
        if isinstance(ranges, list) and len(ranges) == 1:
            return ranges[0]
        return ranges

    def _send_parts(self, file, ranges: list[tuple[int, int]], size: int, body: bool) -> None:
        """A ``multipart/byteranges`` answer, one part per range."""
        heads = [
            (b"\r\n" if number else b"")  # a CRLF before every boundary after the first
            + (
                f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
            ).encode()
            for number, (first, last) in enumerate(ranges)
        ]
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        length = sum(len(h) for h in heads) + _total(ranges) + len(tail)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}")
        self.send_header("Content-Length", str(length))
        self.send_header("Vary", "Accept")
        fd = file.fileno()
        if body and length <= _GATHER_BYTES and all(b - a < _CHUNK for a, b in ranges):
            self.wfile.write(_gather(fd, self._finished_headers(), ranges, length, heads, tail))
            return
        self.end_headers()
        if not body:
            return
        # small parts are gathered into ~1 MiB writes (a syscall per 4 KiB sample would cost
        # more than the copy); large ones go out with sendfile
        out = bytearray()
        for head, (first, last) in zip(heads, ranges):
            out += head
            count = last - first + 1
            if count > _CHUNK:
                self.wfile.write(out)
                out = bytearray()
                self.connection.sendfile(file, first, count)
            else:
                out += os.pread(fd, count, first)
            if len(out) >= _CHUNK:
                self.wfile.write(out)
                out = bytearray()
        self.wfile.write(out + tail)

    def _asks_concatenated(self, header: str | None) -> bool:
        """Whether the client asked for several ranges and takes them back to back."""
        return (
            header is not None
            and "," in header
            and self.server.multi_range
            and self.server.concatenated
            and CONCATENATED in self.headers.get("Accept", "")
        )

    def _send_concatenated(
        self, file, ranges: list[tuple[int, int]], length: int, body: bool
    ) -> None:
        """The ``ranges`` (``length`` bytes in all) back to back, in the order asked, no part
        headers, read into one buffer with the headers for one write (at most
        ``_GATHER_BYTES``; larger answers are multipart, which sends big parts from the file)."""
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", CONCATENATED)
        self.send_header("Content-Length", str(length))
        self.send_header("Vary", "Accept")
        if not body:
            self.end_headers()
            return
        self.wfile.write(_gather(file.fileno(), self._finished_headers(), ranges, length))

    def _finished_headers(self) -> bytes:
        """The answer's headers, ended, as bytes to go out in the same write as the body (one
        send, not two: each wakes the client, and a shuffled batch is several answers)."""
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        return head

    def _resolve(self, path: str) -> str | None:
        """The real path of a file inside the served folder, or None (remembered for a
        moment: resolving costs a system call per folder level, and a shuffled batch asks for
        each file a few times)."""
        now = time.monotonic()
        known = self.server.resolved.get(path)
        if known is not None and now - known[0] < _RESOLVED_SECONDS:
            return known[1]
        real = self._resolve_now(path)
        if len(self.server.resolved) >= 4096:
            self.server.resolved.clear()
        self.server.resolved[path] = (now, real)
        return real

    def _resolve_now(self, path: str) -> str | None:
        parts = path.split("/")[1:]
        if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        if any("\\" in p or "\0" in p for p in parts):
            return None
        real = os.path.realpath(os.path.join(self.server.real_root, *parts))
        if not _inside(real, self.server.real_root) or not os.path.isfile(real):
            return None
        return real

    def _send_index(self, body: bool) -> None:
        payload = json.dumps({"files": data_index(self.server.root)}).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _send_status(self, status: HTTPStatus, body: bool) -> None:
        payload = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


class DataServer(ThreadingHTTPServer):
    """A threaded server of one folder. Use :func:`start_server` to run it in the background."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        multi_range: bool = True,
        concatenated: bool = True,
    ):
        self.root = Path(root)
        self.multi_range = multi_range  # False: stand in for a server without multi-range
        # False: multipart answers only, even to psyche's client (for benchmarks and tests)
        self.concatenated = concatenated
        if not self.root.is_dir():
            raise PsycheError(f"cannot serve {str(root)!r}: not a folder")
        self.real_root = os.path.realpath(self.root)
        self.resolved: dict[str, tuple[float, str | None]] = {}  # URL path -> (when, real path)
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise PsycheError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._thread: threading.Thread | None = None

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logger.debug("connection from %s ended early", client_address)  # a client went away
            return
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        if host in ("0.0.0.0", "::"):  # listening everywhere: name this machine
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self) -> DataServer:
        """Serve on a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> DataServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    multi_range: bool = True,
    concatenated: bool = True,
) -> tuple[DataServer, int]:
    """Serve ``root`` in the background: ``(server, port)``; ``server.close()`` stops it.
    ``multi_range=False`` answers a request for several ranges with the whole file, like a
    plain static server; ``concatenated=False`` answers them as multipart even to psyche's
    client."""
    server = DataServer(root, host, port, multi_range, concatenated).start()
    return server, server.port


def download_hf_repo(repo_id: str, folder: str | os.PathLike[str]) -> Path:
    """Download a Hugging Face dataset repo's data files into ``folder``."""
    from huggingface_hub import snapshot_download

    from psyche_data.sources import hub_error

    repo_id, _, revision = repo_id.partition("@")
    patterns = ["*.ds", "*.bin", "*.npy"]
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None  # read now, not at import
    try:
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision or None,
            allow_patterns=patterns,
            local_dir=str(folder),
            endpoint=endpoint,
        )
    except Exception as exc:  # huggingface_hub raises many types; show one line
        raise hub_error(repo_id, exc) from None
    return Path(folder)
