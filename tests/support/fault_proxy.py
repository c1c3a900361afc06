"""A fault-injecting reverse proxy in front of a real registry, for the fault tests.

:class:`FaultProxy` listens on 127.0.0.1 (plain HTTP/1.1, keep-alive with the client)
and forwards every request to one upstream registry on loopback, one upstream
connection per request. ``Location`` headers that point at the upstream are rewritten
to point at the proxy, so a client keeps talking through it (upload sessions too).

Faults are scripted with :meth:`FaultProxy.add`: a rule selects requests by method and
a regular expression searched in the request target (path and query), and by which
matching occurrence(s) get the fault (``nth`` and ``times``). Actions:

* :class:`Respond` answers a status itself (500/502/503 once, 429 with
  ``Retry-After``), without asking the upstream;
* :class:`CutBody` forwards the response but ends the connection after N body bytes,
  with a TCP reset (default) or an orderly close;
* :class:`Stall` holds the connection without an answer (optionally after N body
  bytes) longer than the client's read timeout, then closes it;
* :class:`DropUpload` forwards the request head and part of an upload body to the
  upstream, then cuts both connections (the upstream sees the body end early);
* :class:`WrongDigest` forwards the request, then answers with a wrong
  ``Docker-Content-Digest``;
* :class:`LoseResponse` forwards the request, then resets the connection instead of
  relaying the answer (the upstream did the work; the client cannot know);
* :class:`IgnoreRange` forwards without the Range header (a server ignoring Range);
* :class:`Delay` forwards after a pause (``FaultProxy(delay=...)`` slows every request).

Every request is recorded as an :class:`Exchange` (method, target, Range and
Content-Range headers, the status the client got or None, the fault applied, times).
Nothing here reaches beyond loopback: the upstream must be a 127.0.0.1 address.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from support.integration import starting
from support.net import LOOPBACK

IO_CHUNK = 64 * 1024
UPSTREAM_TIMEOUT = 30.0
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_NO_BODY_STATUSES = {204, 304}


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    """Answer ``status`` without asking the upstream (registry-style JSON errors)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CutBody:
    """Forward the response, end the connection after ``after`` body bytes.

    ``reset=True`` ends it with a TCP RST (SO_LINGER 0), else with an orderly FIN.
    ``pause`` lets the client read the bytes sent before the cut arrives.
    """

    after: int
    reset: bool = True
    pause: float = 0.2


@dataclass(frozen=True)
class Stall:
    """Read the request, then hold the connection silent for ``seconds`` (or until the
    client hangs up) and close it.

    With ``after``: send the response head and ``after`` body bytes first.
    """

    seconds: float
    after: int | None = None


@dataclass(frozen=True)
class DropUpload:
    """Forward the head and ``after`` bytes of the body upstream, then cut both sides."""

    after: int


@dataclass(frozen=True)
class WrongDigest:
    """Forward the request, answer with this Docker-Content-Digest instead."""

    digest: str = "sha256:" + "0" * 64


@dataclass(frozen=True)
class LoseResponse:
    """Forward the request (the upstream acts on it), then reset the client connection
    instead of relaying the answer: the client cannot know the request succeeded."""


@dataclass(frozen=True)
class IgnoreRange:
    """Forward the request without its Range header, as a server that ignores Range
    (it answers 200 with the whole body)."""


@dataclass(frozen=True)
class Delay:
    """Forward after ``seconds``."""

    seconds: float


Action = Respond | CutBody | Stall | DropUpload | WrongDigest | LoseResponse | IgnoreRange | Delay


@dataclass
class Rule:
    method: str  # "*" matches any
    pattern: re.Pattern[str]
    action: Action
    nth: int = 1  # the first matching request (1-based) that gets the fault
    times: int | None = 1  # how many matching requests in a row get it; None: all from nth
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (self.method in ("*", method)) and self.pattern.search(target) is not None

    def take(self) -> bool:
        """Count one matching request; True if this one gets the fault."""
        self.seen += 1
        if self.seen < self.nth:
            return False
        if self.times is not None and self.seen >= self.nth + self.times:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Exchange:
    method: str
    target: str  # path and query, as the client sent them
    range: str | None  # the request's Range header
    content_range: str | None  # the request's Content-Range header
    status: int | None  # what the client got; None: no response (stalled, dropped)
    fault: str | None  # the action applied, by class name
    started: float  # time.monotonic() when the request head was read
    answered: float  # time.monotonic() when the exchange ended

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


# --- the proxy ----------------------------------------------------------------


class _Httpd(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultProxy


class FaultProxy:
    """Reverse proxy on 127.0.0.1:PORT to ``upstream_host`` ("127.0.0.1:PORT")."""

    def __init__(self, upstream_host: str, *, delay: float = 0.0) -> None:
        starting("a fault-injecting proxy")
        host, _, port = upstream_host.rpartition(":")
        if host != LOOPBACK or not port.isdigit():
            raise ValueError(f"upstream must be {LOOPBACK}:PORT, not {upstream_host!r}")
        self.upstream_host = upstream_host
        self.upstream = (host, int(port))
        self.delay = delay
        self._rules: list[Rule] = []
        self._log: list[Exchange] = []
        self._arrivals: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._httpd = _Httpd((LOOPBACK, 0), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fault-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- public API --------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(
        self, method: str, path: str, action: Action, *, nth: int = 1, times: int | None = 1
    ) -> Rule:
        """Apply ``action`` to the ``nth`` request (and ``times`` in all) whose method
        is ``method`` ("*": any) and whose target matches the regex ``path``. Every
        rule counts the requests it matches; when several fire on one request, the
        one added first applies."""
        rule = Rule(method.upper(), re.compile(path), action, nth, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule (the recorded exchanges stay)."""
        with self._lock:
            self._rules.clear()

    @property
    def requests(self) -> list[Exchange]:
        """Every finished exchange, in the order they ended. An exchange is recorded
        just after its last byte went out, so first allow requests in flight a moment
        (up to 2 s) to finish: a client may act on an answer before it is recorded."""
        deadline = time.monotonic() + 2.0
        while True:
            with self._lock:
                if len(self._log) >= len(self._arrivals) or time.monotonic() > deadline:
                    return list(self._log)
            time.sleep(0.005)

    @property
    def arrivals(self) -> list[tuple[str, str, float]]:
        """(method, target, time.monotonic()) of every request as its head arrived,
        including those still in progress (an Exchange is recorded when it ends)."""
        with self._lock:
            return list(self._arrivals)

    def matching(self, method: str, path: str) -> list[Exchange]:
        pattern = re.compile(path)
        return [
            e
            for e in self.requests
            if method.upper() in ("*", e.method) and pattern.search(e.target)
        ]

    def wait_for(
        self, predicate: Callable[[list[Exchange]], bool], timeout: float = 10.0
    ) -> list[Exchange]:
        deadline = time.monotonic() + timeout
        while True:
            log = self.requests
            if predicate(log):
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"proxy: condition not met in {timeout}s; saw {log}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- used by the handler -----------------------------------------------------

    def _select(self, method: str, target: str) -> Action | None:
        with self._lock:
            self._arrivals.append((method, target, time.monotonic()))
            chosen: Action | None = None
            for rule in self._rules:
                if rule.matches(method, target) and rule.take() and chosen is None:
                    chosen = rule.action
            return chosen

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._log.append(exchange)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _rewrite_location(self, value: str) -> str:
        for scheme in ("http://", "https://"):
            prefix = scheme + self.upstream_host
            if value.startswith(prefix):
                return "http://" + self.host + value[len(prefix) :]
        return value


def _error_body(status: int) -> bytes:
    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
    doc = {"errors": [{"code": code, "message": f"fault injected: HTTP {status}"}]}
    return json.dumps(doc).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Httpd

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def proxy(self) -> FaultProxy:
        return self.server.owner

    def setup(self) -> None:
        super().setup()
        self.proxy._track(self.connection, True)

    def finish(self) -> None:
        self.proxy._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        # Clients try TLS first on loopback (Docker's rule). Answer a ClientHello in
        # plain HTTP at once, as a plain-HTTP registry does, so the client falls back.
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":
            with contextlib.suppress(OSError):
                self.connection.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self.close_connection = True
            return
        with contextlib.suppress(OSError, ValueError):  # ValueError: we closed it
            super().handle()

    # -- helpers -----------------------------------------------------------------

    def _abort(self, *, reset: bool) -> None:
        """End the client connection now: RST (reset) or FIN."""
        self.close_connection = True
        if reset:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            for stream in (self.rfile, self.wfile):
                with contextlib.suppress(OSError):
                    stream.close()
            with contextlib.suppress(OSError):
                self.connection.close()
        else:
            with contextlib.suppress(OSError):
                self.wfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

    def _stall(self, seconds: float) -> None:
        """Say nothing for ``seconds``, or until the client hangs up (as after its
        read timeout) or the proxy stops."""
        deadline = time.monotonic() + seconds
        while not self.proxy._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return

    def _body_length(self) -> int | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        return int(self.headers.get("Content-Length") or 0)

    def _read_body(self) -> bytes:
        length = self._body_length()
        if length is not None:
            return self.rfile.read(length) if length else b""
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.read(2)

    def _upstream_head(self, length: int | None, *, drop: frozenset[str] = frozenset()) -> bytes:
        lines = [f"{self.command} {self.path} HTTP/1.1", f"Host: {self.proxy.upstream_host}"]
        for key, value in self.headers.items():
            if key.lower() not in _HOP_BY_HOP | drop | {"host", "content-length"}:
                lines.append(f"{key}: {value}")
        if length or self.command in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length or 0}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _connect(self) -> socket.socket:
        return socket.create_connection(self.proxy.upstream, timeout=UPSTREAM_TIMEOUT)

    def _send_head(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()

    # -- the one entry point -----------------------------------------------------

    def _proxy(self) -> None:
        proxy = self.proxy
        started = time.monotonic()
        action = proxy._select(self.command, self.path)
        status: int | None = None

        def record() -> None:
            proxy._record(
                Exchange(
                    self.command,
                    self.path,
                    self.headers.get("Range"),
                    self.headers.get("Content-Range"),
                    status,
                    type(action).__name__ if action is not None else None,
                    started,
                    time.monotonic(),
                )
            )

        try:
            if isinstance(action, DropUpload):
                self._drop_upload(action)
                return
            body = self._read_body()
            if proxy.delay:
                proxy._sleep(proxy.delay)
            if isinstance(action, Delay):
                proxy._sleep(action.seconds)
            if isinstance(action, Respond):
                status = action.status
                self._respond(action)
                return
            if isinstance(action, Stall) and action.after is None:
                self._stall(action.seconds)
                self._abort(reset=False)
                return
            status = self._forward(body, action)
        except OSError:
            self.close_connection = True
        finally:
            record()

    do_GET = do_HEAD = do_POST = do_PUT = _proxy  # noqa: N815
    do_PATCH = do_DELETE = _proxy  # noqa: N815

    def _respond(self, action: Respond) -> None:
        data = b"" if self.command == "HEAD" else _error_body(action.status)
        headers = [("Content-Type", "application/json"), *action.headers.items()]
        headers.append(("Content-Length", str(len(data) if data else 0)))
        self._send_head(action.status, "", headers)
        self.wfile.write(data)
        self.wfile.flush()

    def _forward(self, body: bytes, action: Action | None) -> int | None:
        drop = frozenset({"range"}) if isinstance(action, IgnoreRange) else frozenset()
        with self._connect() as upstream:
            upstream.sendall(self._upstream_head(len(body), drop=drop) + body)
            response = http.client.HTTPResponse(upstream, method=self.command)
            response.begin()
            try:
                if isinstance(action, LoseResponse):
                    response.read()
                    self._abort(reset=True)
                    return None
                return self._relay(response, action)
            finally:
                response.close()

    def _relay(self, response: http.client.HTTPResponse, action: Action | None) -> int:
        headers: list[tuple[str, str]] = []
        for key, value in response.getheaders():
            low = key.lower()
            if low in _HOP_BY_HOP or low == "content-length":
                continue
            if low == "location":
                value = self.proxy._rewrite_location(value)
            if low == "docker-content-digest" and isinstance(action, WrongDigest):
                value = action.digest
            headers.append((key, value))
        no_body = self.command == "HEAD" or response.status in _NO_BODY_STATUSES
        declared = response.getheader("Content-Length")
        if no_body:
            if declared is not None:
                headers.append(("Content-Length", declared))
            self._send_head(response.status, response.reason, headers)
            self.wfile.flush()
            return response.status
        if response.length is None:  # chunked or until close: buffer, then send a length
            data = response.read()
            headers.append(("Content-Length", str(len(data))))
            self._send_head(response.status, response.reason, headers)
            self._send_body([data], action)
            return response.status
        headers.append(("Content-Length", str(response.length)))
        self._send_head(response.status, response.reason, headers)
        self._send_body(iter(lambda: response.read(IO_CHUNK), b""), action)
        return response.status

    def _send_body(self, chunks: Any, action: Action | None) -> None:
        limit = None
        if isinstance(action, CutBody | Stall):
            limit = action.after
        sent = 0
        for chunk in chunks:
            if limit is not None and sent + len(chunk) >= limit:
                self.wfile.write(chunk[: limit - sent])
                self.wfile.flush()
                self._cut(action)
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        self.wfile.flush()
        if limit is not None:  # the body was shorter than the cut point: cut at its end
            self._cut(action)

    def _cut(self, action: Action | None) -> None:
        if isinstance(action, CutBody):
            self.proxy._sleep(action.pause)
            self._abort(reset=action.reset)
        elif isinstance(action, Stall):
            self._stall(action.seconds)
            self._abort(reset=False)

    def _drop_upload(self, action: DropUpload) -> None:
        length = self._body_length()
        if length is None:
            raise OSError("DropUpload needs a Content-Length body")
        with self._connect() as upstream:
            upstream.sendall(self._upstream_head(length))
            left = min(action.after, length)
            while left > 0:
                data = self.rfile.read(min(left, IO_CHUNK))
                if not data:
                    break
                upstream.sendall(data)
                left -= len(data)
            # The upstream sees the body end early; wait for it to finish handling
            # that (its answer, or its close) before the client may ask again.
            upstream.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError, http.client.HTTPException):
                response = http.client.HTTPResponse(upstream, method=self.command)
                response.begin()
                response.read()
        self._abort(reset=True)
