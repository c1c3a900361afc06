"""Loopback networking for the test servers: free ports, one-shot HTTP requests,
Basic credentials and htpasswd files."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

LOOPBACK = "127.0.0.1"

Creds = tuple[str, str]
# The user the auth-requiring fixtures accept (registries, token server, git over HTTP).
TEST_CREDS: Creds = ("airbundle", "test-pass-1")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    *,
    creds: Creds | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP(S) request with http.client: never uses proxy settings, no redirects."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    hdrs = dict(headers or {})
    if creds is not None:
        hdrs["Authorization"] = basic_auth(*creds)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only format distribution accepts;
    nginx checks them with libxcrypt). Cost 4 keeps startup fast."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode("ascii")
        lines.append(f"{user}:{hashed}\n")
    path.write_text("".join(lines))
    return path
