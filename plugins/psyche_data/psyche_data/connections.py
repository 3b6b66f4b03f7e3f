"""Kept-alive HTTP/1.1 connections on the standard library's ``http.client``.

Why not httpx: a shuffled batch is a few requests of hundreds of ranges each, and every
microsecond of client CPU per request competes with the training step for the same cores.
httpx's layers (httpcore's state machine, its own stream and pool objects) cost a few times
the client CPU of ``http.client`` reading an answer straight into the caller's buffer, and
the provider is bound by that CPU over a fast network (the change doubled
``benchmarks/data_http.py``'s shuffled and file-order rates; see the issue notes).

What httpx gave beyond that is kept here: redirects (the Hugging Face Hub answers with one to
its CDN; ``Authorization`` is not carried to another host), the ``HTTP(S)_PROXY`` /
``NO_PROXY`` environment (with a login in the proxy URL), certificate checks with certifi's
roots (or ``SSL_CERT_FILE``), and one quiet retry when a kept-alive connection turns out to be
closed by the server.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import unquote, urljoin, urlsplit

Origin = tuple[str, str, int]

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 10


class ConnectionProblem(Exception):
    """The request did not get an answer (the message says why); worth another try."""


class UntrustedServer(Exception):
    """The server's TLS certificate did not check out; another try will not change that."""


class Connections:
    """A pool of idle kept-alive connections per origin, shared by threads.

    A request takes an idle connection to its origin (or opens one) and hands it back only
    when its answer was read to the end, so a connection in the pool is always ready for the
    next request.
    """

    def __init__(self, timeout: float, headers: Mapping[str, str]) -> None:
        self.timeout = timeout
        self.headers = dict(headers)
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._proxies = urllib.request.getproxies()
        self._routes: dict[Origin, tuple[Origin | None, dict[str, str]]] = {}
        self._tls: ssl.SSLContext | None = None

    @contextmanager
    def get(self, url: str, headers: Mapping[str, str]) -> Iterator[http.client.HTTPResponse]:
        """The answer to ``GET url`` (after redirects), its headers read and its body not yet;
        the connection goes back to the pool if the body was read to the end, else is closed.

        Raises :class:`ConnectionProblem` when no answer came."""
        sent = {**self.headers, **headers}
        for _ in range(_MAX_REDIRECTS + 1):
            origin = _origin(url)
            connection, response = self._send(origin, url, sent)
            if response.status in _REDIRECTS and response.getheader("location"):
                target = urljoin(url, response.getheader("location"))
                _read_small(response)
                self._release(origin, connection, response)
                if _origin(target) != origin:  # credentials stay with the host they were for
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                url = target
                continue
            try:
                yield response
            finally:
                self._release(origin, connection, response)
            return
        raise ConnectionProblem(f"more than {_MAX_REDIRECTS} redirects")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # -- connections ---------------------------------------------------------------------------

    def _send(
        self, origin: Origin, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        proxy, proxy_headers = self._route(origin)
        if proxy is not None and origin[0] == "http":  # the proxy reads the whole URL
            target, headers = url, {**headers, **proxy_headers}
        else:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection, reused = self._take(origin)
        try:
            return connection, _exchange(connection, target, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            connection.close()
            if not reused:
                raise ConnectionProblem(describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ConnectionProblem(describe(exc)) from None
        # the server had closed the kept-alive connection while it was idle: one fresh try
        connection = self._open(origin)
        try:
            return connection, _exchange(connection, target, headers)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ConnectionProblem(describe(exc)) from None

    def _take(self, origin: Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._open(origin), False

    def _release(self, origin: Origin, connection: http.client.HTTPConnection, response) -> None:
        if response.isclosed() and not response.will_close:
            with self._lock:
                self._idle.setdefault(origin, []).append(connection)
        else:  # an unread body or a server that said close: not reusable
            connection.close()

    def _open(self, origin: Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        proxy, proxy_headers = self._route(origin)
        address = (host, port) if proxy is None else (proxy[1], proxy[2])
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                *address, timeout=self.timeout, context=self._tls_context()
            )
            if proxy is not None:
                connection.set_tunnel(host, port, headers=proxy_headers)
        else:
            connection = http.client.HTTPConnection(*address, timeout=self.timeout)
        try:
            connection.connect()
        except TimeoutError:
            connection.close()
            raise ConnectionProblem("timed out connecting") from None
        except ssl.SSLCertVerificationError as exc:
            connection.close()
            raise UntrustedServer(
                f"cannot connect: {exc.verify_message or exc} (set SSL_CERT_FILE to a file "
                "with the certificate authority it uses, if you trust it)"
            ) from None
        except OSError as exc:
            connection.close()
            reason = exc.strerror or str(exc) or "connection refused"
            raise ConnectionProblem(f"cannot connect ({reason})") from None
        return connection

    def _route(self, origin: Origin) -> tuple[Origin | None, dict[str, str]]:
        """The proxy for ``origin`` (None: direct) and the headers it wants; worked out once
        per origin (the environment's ``NO_PROXY`` check is not cheap)."""
        route = self._routes.get(origin)
        if route is None:
            route = self._routes[origin] = _route(self._proxies, origin)
        return route

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = _tls_context()
        return self._tls


def _tls_context() -> ssl.SSLContext:
    """certifi's roots (as httpx and requests use) unless the user names their own."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _exchange(
    connection: http.client.HTTPConnection, target: str, headers: Mapping[str, str]
) -> http.client.HTTPResponse:
    connection.request("GET", target, headers=headers)
    return connection.getresponse()


def _route(proxies: Mapping[str, str], origin: Origin) -> tuple[Origin | None, dict[str, str]]:
    scheme, host, _ = origin
    proxy = proxies.get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None, {}
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers = {}
    if parts.username:  # http://user:password@proxy:port
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    return _origin(parts.geturl()), headers


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80)


def _read_small(response: http.client.HTTPResponse) -> None:
    """Reads a redirect's short body so its connection can be reused (a long one is left, and
    the connection closed)."""
    length = response.getheader("content-length")
    if length is not None and int(length) <= 65536:
        response.read()


def describe(exc: BaseException) -> str:
    """What a failed read means, in a few words."""
    if not isinstance(exc, OSError | http.client.HTTPException):
        return str(exc)  # ours, and already worded
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(
        exc,
        http.client.RemoteDisconnected
        | http.client.IncompleteRead
        | ConnectionResetError
        | BrokenPipeError,
    ):
        return f"the server closed the connection early ({exc!r})"
    if isinstance(exc, http.client.HTTPException):
        return f"a malformed answer ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"
