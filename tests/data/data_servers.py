"""Loopback HTTP servers for the tests: a misbehaving file server and a tiny fake Hugging Face
Hub. Both bind 127.0.0.1 on a free port and shut down cleanly."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from psyche_data.fetch import CONCATENATED
from psyche_data.server import BOUNDARY, parse_range, parse_ranges


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.stop = threading.Event()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up on purpose are part of the tests

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self._thread.join()
        self.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args) -> None:
        pass

    def record(self) -> None:
        with self.server.lock:
            self.server.requests.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            )

    def send_bytes(self, data: bytes, body: bool = True, extra: dict[str, str] | None = None):
        """Answer a (possibly ranged) request for ``data`` correctly."""
        wanted = parse_range(self.headers.get("Range"), len(data))
        if wanted == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = (0, len(data) - 1) if wanted is None else wanted
        self.send_response(200 if wanted is None else 206)
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        if body:
            self.wfile.write(data[first : last + 1])

    def send_plain(self, status: int, text: str = "", headers: dict[str, str] | None = None):
        payload = text.encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class FaultyServer(_Server):
    """Serves ``files`` (name -> bytes); each request takes the next behaviour from ``script``
    (then ``default``): ok, drop, stall, 500, 404, short (closes mid-body), truncated
    (a complete answer with too few bytes), ignore-range, ok-then-close (a good answer, then
    the connection closed without saying so, as servers do to idle keep-alive ones). With
    ``multi_range`` it answers a request for several ranges with ``multipart/byteranges`` (else
    with the whole file, as a plain static server does); with ``concatenated`` too, it answers
    a client that asks for it with the ranges back to back (then ``long`` sends a byte more
    than asked)."""

    def __init__(
        self,
        files: dict[str, bytes],
        script=(),
        default: str = "ok",
        multi_range: bool = False,
        concatenated: bool = False,
    ) -> None:
        self.files = files
        self.multi_range = multi_range
        self.concatenated = concatenated
        self.script = list(script)
        self.default = default
        super().__init__(_FaultyHandler)

    def next_behaviour(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else self.default


class _FaultyHandler(_Base):
    def send_concatenated(self, data: bytes, behaviour: str) -> None:
        ranges = parse_ranges(self.headers.get("Range"), len(data))
        body = b"".join(data[first : last + 1] for first, last in ranges)
        body += b"!" if behaviour == "long" else b""
        self.send_response(206)
        self.send_header("Content-Type", CONCATENATED)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if behaviour == "short" else body)
        if behaviour == "short":
            self.close_connection = True

    def send_multipart(self, data: bytes, cut: bool) -> None:
        body = b""
        for first, last in parse_ranges(self.headers.get("Range"), len(data)):
            body += (
                (
                    f"--{BOUNDARY}\r\nContent-Range: bytes {first}-{last}/{len(data)}\r\n\r\n"
                ).encode()
                + data[first : last + 1]
                + b"\r\n"
            )
        body += f"--{BOUNDARY}--\r\n".encode()
        self.send_response(206)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.close_connection = True

    def do_GET(self) -> None:
        self.record()
        data = self.server.files.get(unquote(urlsplit(self.path).path).lstrip("/"))
        behaviour = self.server.next_behaviour()
        several = "," in (self.headers.get("Range") or "")
        if data is None or behaviour == "404":
            self.send_plain(404, "not found")
        elif (
            several
            and self.server.concatenated
            and CONCATENATED in self.headers.get("Accept", "")
            and behaviour in ("ok", "short", "long")
        ):
            self.send_concatenated(data, behaviour)
        elif several and self.server.multi_range and behaviour in ("ok", "short"):
            self.send_multipart(data, cut=behaviour == "short")
        elif behaviour == "ok":
            self.send_bytes(data)
        elif behaviour == "ok-then-close":
            self.send_bytes(data)
            self.close_connection = True
        elif behaviour == "drop":
            self.close_connection = True
            self.connection.close()
        elif behaviour == "stall":
            self.server.stop.wait(10)
            self.close_connection = True
        elif behaviour == "500":
            self.send_plain(500, "oops")
        elif behaviour == "ignore-range":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif behaviour == "short":
            first, last = parse_range(self.headers.get("Range"), len(data))  # type: ignore[misc]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            self.send_header("Content-Length", str(last - first + 1))
            self.end_headers()
            self.wfile.write(data[first : first + (last - first + 1) // 2])
            self.close_connection = True
        elif behaviour == "truncated":  # a consistent answer that is simply too short
            first, last = parse_range(self.headers.get("Range"), len(data))  # type: ignore[misc]
            half = (last - first + 1) // 2
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            self.send_header("Content-Length", str(half))
            self.end_headers()
            self.wfile.write(data[first : first + half])
        else:
            raise AssertionError(behaviour)


class RedirectServer(_Server):
    """Answers every GET with ``status`` and ``Location: {target}{path}`` (as the Hub sends a
    download to its CDN)."""

    def __init__(self, target: str, status: int = 302) -> None:
        self.target = target
        self.status = status
        super().__init__(_RedirectHandler)


class _RedirectHandler(_Base):
    def do_GET(self) -> None:
        self.record()
        self.send_plain(self.server.status, "", {"Location": self.server.target + self.path})


SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(_Server):
    """Just enough of the Hugging Face Hub for huggingface_hub to list a dataset repo and
    download its files: ``repos`` maps ``owner/name`` -> {path: bytes}."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        super().__init__(_HubHandler)


class _HubHandler(_Base):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.record()
        path = unquote(urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            kind = parts[4] if len(parts) > 4 else "revision"
            files = self.server.repos.get(repo_id)
            if files is None:
                self.send_plain(404, "{}", {"X-Error-Code": "RepoNotFound"})
            elif kind == "revision":
                info = {
                    "id": repo_id,
                    "sha": SHA,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in files],
                }
                self.send_plain(200, json.dumps(info), {"Content-Type": "application/json"})
            elif kind == "tree":
                entries = [
                    {"type": "file", "path": p, "size": len(d), "oid": _oid(d)}
                    for p, d in files.items()
                ]
                self.send_plain(200, json.dumps(entries), {"Content-Type": "application/json"})
            else:
                self.send_plain(404)
        elif parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
            repo_id, file_path = "/".join(parts[1:3]), "/".join(parts[5:])
            files = self.server.repos.get(repo_id, {})
            if file_path not in files:
                self.send_plain(404, "", {"X-Error-Code": "EntryNotFound"})
                return
            data = files[file_path]
            headers = {"X-Repo-Commit": SHA, "ETag": f'"{_oid(data)}"', "Accept-Ranges": "bytes"}
            self.send_bytes(data, body=self.command != "HEAD", extra=headers)
        else:
            self.send_plain(404)


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
