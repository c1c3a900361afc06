"""A loopback reverse proxy in front of docker-registry that refuses what stricter
registries refuse (Quay's path depth, no push-to-create, a layer listed twice) and
can answer the OCI referrers API docker-registry 2.8 lacks."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from support.process import Server, ThreadingServer, serve_in_thread
from support.registry import Registry

_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>blobs|manifests|tags|referrers)(?:/|$)")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Strictness:
    """What the proxy refuses or adds, as stricter registries do."""

    max_depth: int | None = None  # Quay organizations: 2 (org/name)
    push_to_create: bool = True  # ECR, Harbor projects: False
    refuse_duplicate_layers: bool = False  # self-hosted Quay (oc-mirror #1478)
    referrers_api: bool = False  # answer GET /v2/NAME/referrers/DIGEST (OCI 1.1)
    existing: set[str] = field(default_factory=set)  # repositories made beforehand
    referrers: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # "METHOD PATH: why", in order
    lock: threading.Lock = field(default_factory=threading.Lock)


class StrictProxy(Server):
    """A loopback reverse proxy in front of a docker-registry that refuses what
    stricter registries refuse: paths deeper than `max_depth`, pushes into
    repositories nobody created, manifests listing a layer twice; and, with
    `referrers_api`, answers the OCI referrers API docker-registry 2.8 lacks.
    Everything else passes through unchanged (the Host header too, so the
    registry's Location headers name the proxy)."""

    def __init__(self, upstream: Registry, strictness: Strictness) -> None:
        super().__init__()
        self.upstream = upstream
        self.rules = strictness
        handler = _strict_handler(upstream.host, strictness)
        self.httpd = ThreadingServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        serve_in_thread(self.httpd, "strict-proxy")
        self._on_stop(self.httpd.server_close)
        self._on_stop(self.httpd.shutdown)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create(self, repo: str) -> None:
        """What an administrator does on a registry without push-to-create."""
        with self.rules.lock:
            self.rules.existing.add(repo)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


def _refusal(
    rules: Strictness, method: str, path: str, name: str, body: bytes
) -> tuple[int, dict[str, Any]] | None:
    if method not in ("POST", "PUT", "PATCH", "DELETE"):
        return None
    if rules.max_depth is not None and name.count("/") + 1 > rules.max_depth:
        return 400, _error(
            "NAME_INVALID", f"repository name may have at most {rules.max_depth} components"
        )
    with rules.lock:
        known = name in rules.existing
    if not rules.push_to_create and not known:
        return 404, _error("NAME_UNKNOWN", "repository name not known to registry")
    if rules.refuse_duplicate_layers and method == "PUT" and "/manifests/" in path:
        try:
            layers = [layer["digest"] for layer in json.loads(body).get("layers", [])]
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if len(layers) != len(set(layers)):
            return 400, _error("MANIFEST_INVALID", "manifest invalid: duplicate layer digests")
    return None


def _subject_of(body: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        doc = json.loads(body)
        subject = doc["subject"]["digest"]
    except (ValueError, TypeError, KeyError):
        return None
    kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
    desc: dict[str, Any] = {
        "mediaType": doc.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
        "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "artifactType": kind,
    }
    if doc.get("annotations"):
        desc["annotations"] = doc["annotations"]
    return subject, desc


def _strict_handler(upstream: str, rules: Strictness) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        def _json(self, status: int, doc: dict[str, Any], kind: str = "application/json") -> None:
            self._send(status, json.dumps(doc).encode(), [("Content-Type", kind)])

        def _handle(self) -> None:
            body = self._body()
            path = urllib.parse.urlsplit(self.path).path
            route = _ROUTE.match(path)
            name = route.group("name") if route else ""
            if route and route.group("kind") == "referrers" and rules.referrers_api:
                subject = path.rsplit("/", 1)[-1]
                with rules.lock:
                    found = list(rules.referrers.get((name, subject), []))
                index = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": found,
                }
                self._json(200, index, "application/vnd.oci.image.index.v1+json")
                return
            refused = _refusal(rules, self.command, path, name, body) if route else None
            if refused is not None:
                with rules.lock:
                    rules.refused.append(
                        f"{self.command} {path}: {refused[1]['errors'][0]['code']}"
                    )
                self._json(*refused)
                return
            conn = http.client.HTTPConnection(upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(
                self.command,
                self.path,
                body=body if body or self.command in ("PUT", "POST", "PATCH") else None,
                headers=headers,
            )
            response = conn.getresponse()
            data = response.read()
            out = list(response.getheaders())
            conn.close()
            if (
                rules.referrers_api
                and self.command == "PUT"
                and route
                and route.group("kind") == "manifests"
                and response.status == 201
            ):
                referrer = _subject_of(body)
                if referrer is not None:
                    with rules.lock:
                        rules.referrers.setdefault((name, referrer[0]), []).append(referrer[1])
                    out.append(("OCI-Subject", referrer[0]))
            self._send(response.status, data, out)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    return Handler
