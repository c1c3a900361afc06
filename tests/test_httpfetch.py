"""Downloads of charts and files follow the registries' rules: credentials from the
registry auth files sent as Basic only to the host that asks, never along a
redirect to another host; plain HTTP only for loopback and --insecure-registry."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airbundle.adapters.httpfetch import HttpFetcher
from airbundle.adapters.registry.transport import RetryPolicy, TLSConfig, Transport
from airbundle.errors import SourceError
from support.env import hermetic
from support.process import ThreadingServer

CREDS = ("fetcher", "s3cret")


class Recorder:
    """A loopback HTTP server answering with `answer(path, headers)`; `.seen`
    holds (path, Authorization header) of every request."""

    def __init__(self, answer: Any) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self.path, self.headers)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, Recorder]]:
    """`protected` asks for Basic credentials, then redirects to `other` (another
    host: another port), which serves the file; the auth file holds credentials
    for both."""
    hermetic(monkeypatch, tmp_path)
    other = Recorder(lambda path, headers: (200, {}, b"the file"))
    good = "Basic " + base64.b64encode(":".join(CREDS).encode()).decode()

    def protected_answer(path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Authorization") != good:
            return 401, {"WWW-Authenticate": 'Basic realm="charts"'}, b""
        return 302, {"Location": f"http://{other.host}/dl/file"}, b""

    protected = Recorder(protected_answer)
    auth = base64.b64encode(":".join(CREDS).encode()).decode()
    (tmp_path / "auth.json").write_text(
        json.dumps({"auths": {protected.host: {"auth": auth}, other.host: {"auth": auth}}})
    )
    yield protected, other
    protected.close()
    other.close()


def test_credentials_go_only_to_the_host_that_asks_and_never_along_a_redirect(
    servers: tuple[Recorder, Recorder],
) -> None:
    protected, other = servers
    fetcher = HttpFetcher(Transport())
    out = io.BytesIO()
    got = fetcher.download(f"http://{protected.host}/file", out, what="file")
    assert out.getvalue() == b"the file" and got.size == 8
    # First without credentials; with them only once asked.
    assert [auth is not None for _path, auth in protected.seen] == [False, True]
    # The host the redirect leads to gets none, though the auth file has some for it.
    assert other.seen == [("/dl/file", None)]


def test_credentials_in_the_url_are_sent_to_that_host_only(
    servers: tuple[Recorder, Recorder],
) -> None:
    protected, other = servers
    fetcher = HttpFetcher(Transport())
    data = fetcher.get_bytes(
        f"http://{CREDS[0]}:{CREDS[1]}@{protected.host}/file", max_bytes=100, what="file"
    )
    assert data == b"the file"
    assert [auth is not None for _path, auth in protected.seen] == [True]
    assert other.seen == [("/dl/file", None)]


def test_plain_http_beyond_loopback_is_refused_unless_allowed() -> None:
    with pytest.raises(SourceError, match="is plain HTTP") as info:
        HttpFetcher(Transport()).get_bytes("http://192.0.2.1/index.yaml", max_bytes=10, what="x")
    assert "--insecure-registry 192.0.2.1" in str(info.value.hint)
    allowed = HttpFetcher(
        Transport(
            TLSConfig(insecure_hosts=frozenset({"192.0.2.1:1"})),
            RetryPolicy(attempts=1, connect_timeout=0.5),
        )
    )
    # Allowed, it is tried (and fails to connect: nothing listens there).
    with pytest.raises(SourceError) as tried:
        allowed.get_bytes("http://192.0.2.1:1/index.yaml", max_bytes=10, what="x")
    assert "plain HTTP" not in tried.value.message


def test_an_answer_larger_than_allowed_is_refused(servers: tuple[Recorder, Recorder]) -> None:
    _protected, other = servers
    with pytest.raises(SourceError, match="more than 4 bytes"):
        HttpFetcher(Transport()).get_bytes(f"http://{other.host}/x", max_bytes=4, what="x")
