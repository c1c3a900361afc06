"""A recording HTTP proxy (CONNECT and absolute URIs) that only forwards to
loopback: proves which requests a client sent through its proxy settings."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import select
import socket
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from support.net import LOOPBACK
from support.process import Server, ThreadingServer, serve_in_thread

# --- recording proxy --------------------------------------------------------


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str  # the absolute URI, or host:port for CONNECT
    allowed: bool

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass
class _ProxyState:
    allowed_hosts: frozenset[str]
    requests: list[ProxyRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sockets: set[socket.socket] = field(default_factory=set)
    closing: threading.Event = field(default_factory=threading.Event)

    def record(self, method: str, target: str, allowed: bool) -> None:
        with self.lock:
            self.requests.append(ProxyRequest(method, target, allowed))


class RecordingProxy(Server):
    """An HTTP proxy on 127.0.0.1 that records every request and only forwards to
    loopback: CONNECT tunnels and absolute-URI GET/HEAD/POST/PUT/PATCH/DELETE/OPTIONS.
    Other targets get 403 (recorded with ``allowed=False``), and no connection."""

    def __init__(self, *, allowed_hosts: Iterable[str] = (LOOPBACK, "localhost", "::1")) -> None:
        super().__init__()
        self._state = _ProxyState(frozenset(h.lower() for h in allowed_hosts))
        self._httpd = ThreadingServer((LOOPBACK, 0), _make_proxy_handler(self._state))
        self.port = int(self._httpd.server_address[1])
        serve_in_thread(self._httpd, f"recording-proxy-{self.port}")
        self._on_stop(self._httpd.server_close)
        self._on_stop(self._close_tunnels)
        self._on_stop(self._httpd.shutdown)

    @property
    def requests(self) -> list[ProxyRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _close_tunnels(self) -> None:
        self._state.closing.set()
        with self._state.lock:
            socks = list(self._state.sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def _make_proxy_handler(state: _ProxyState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _allowed(self, host: str | None) -> bool:
            return host is not None and host.strip("[]").lower() in state.allowed_hosts

        def _refuse(self, status: int, why: str) -> None:
            self.close_connection = True
            body = why.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_CONNECT(self) -> None:
            host, _, port = self.path.rpartition(":")
            allowed = self._allowed(host) and port.isdigit()
            state.record("CONNECT", self.path, allowed)
            if not allowed:
                self._refuse(403, f"proxy: only loopback targets, not {self.path}\n")
                return
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            except OSError as err:
                self._refuse(502, f"proxy: {err}\n")
                return
            self.close_connection = True
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            _tunnel(state, self.connection, upstream)

        def _forward(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.scheme != "http" or not parts.hostname:
                state.record(self.command, self.path, False)
                self._refuse(400, "proxy: absolute http:// URI required\n")
                return
            allowed = self._allowed(parts.hostname)
            state.record(self.command, self.path, allowed)
            if not allowed:
                self._refuse(403, f"proxy: only loopback targets, not {parts.hostname}\n")
                return
            self.close_connection = True
            try:
                upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
            except OSError as err:
                self._refuse(502, f"proxy: {err}\n")
                return
            with upstream:
                path = parts.path or "/"
                if parts.query:
                    path += "?" + parts.query
                head = [f"{self.command} {path} HTTP/1.1"]
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        head.append(f"{key}: {value}")
                head.append("Connection: close")
                upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    _copy_chunked(self.rfile, upstream)
                else:
                    _copy_exact(self.rfile, upstream, int(self.headers.get("Content-Length") or 0))
                # Upstream closes after its response (Connection: close): relay it raw.
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    self.wfile.write(data)
                self.wfile.flush()

        do_GET = do_HEAD = do_POST = do_PUT = _forward  # noqa: N815
        do_PATCH = do_DELETE = do_OPTIONS = _forward  # noqa: N815

    return Handler


def _copy_exact(rfile: Any, sock: socket.socket, length: int) -> None:
    while length > 0:
        data = rfile.read(min(length, 65536))
        if not data:
            raise ConnectionError("client closed before sending the whole body")
        sock.sendall(data)
        length -= len(data)


def _copy_chunked(rfile: Any, sock: socket.socket) -> None:
    """Relay a chunked body verbatim (sizes, data, trailers)."""
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed inside a chunked body")
        sock.sendall(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                trailer = rfile.readline(65537)
                sock.sendall(trailer)
                if trailer in (b"\r\n", b"\n", b""):
                    return
        _copy_exact(rfile, sock, size + 2)


def _tunnel(state: _ProxyState, client: socket.socket, upstream: socket.socket) -> None:
    with state.lock:
        state.sockets.update((client, upstream))
    try:
        pair = {client: upstream, upstream: client}
        while not state.closing.is_set():
            readable, _, _ = select.select(list(pair), [], [], 0.5)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                pair[sock].sendall(data)
    except (OSError, ValueError):
        return
    finally:
        with state.lock:
            state.sockets.discard(client)
            state.sockets.discard(upstream)
        upstream.close()
