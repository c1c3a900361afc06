"""Plain HTTP(S) downloads (chart repositories, files by URL) under the same
rules as registries: the same Transport (proxies from the environment,
--ca-file, client certificates, retries), plain HTTP only for loopback and
--insecure-registry hosts, and credentials from the same files (Docker's
config.json, containers' auth.json, credential helpers), sent as Basic only
to the host that asks for them. Redirects are followed by hand, a few at
most, and credentials never follow a redirect to another host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

from airbundle.adapters.registry.auth import Credentials, lookup_credentials, parse_challenge
from airbundle.adapters.registry.transport import Response, Transport
from airbundle.errors import (
    AirbundleError,
    AuthError,
    ResponseTooLargeError,
    SourceError,
    TransportError,
)
from airbundle.format.digest import Digest
from airbundle.format.reference import is_loopback_registry
from airbundle.limits import DEFAULT_LIMITS, Limits

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def redact(url: str) -> str:
    """A URL without its user:password, for messages and manifests."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class Downloaded:
    size: int
    digest: Digest


@dataclass
class HttpFetcher:
    transport: Transport
    limits: Limits = DEFAULT_LIMITS
    error: type[AirbundleError] = SourceError
    _credentials: dict[str, Credentials | None] = field(default_factory=dict)

    def get_bytes(self, url: str, *, max_bytes: int, what: str) -> bytes:
        """The whole body of a GET, refused beyond `max_bytes`."""
        response = self._open(url, what)
        try:
            return response.read_limited(max_bytes)
        except ResponseTooLargeError:
            raise self.error(f"{what}: {redact(url)} answers more than {max_bytes} bytes") from None
        except TransportError as exc:
            raise self.error(f"{what}: {exc.message}", hint=exc.hint) from exc
        finally:
            response.close()

    def download(
        self, url: str, out: BinaryIO, *, what: str, max_bytes: int | None = None
    ) -> Downloaded:
        """Stream a GET into `out`, hashing it; the caller checks the digest."""
        response = self._open(url, what)
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in response.stream(self.limits.io_chunk_bytes):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise self.error(f"{what}: {redact(url)} is larger than {max_bytes} bytes")
                h.update(chunk)
                out.write(chunk)
        except TransportError as exc:
            raise self.error(f"{what}: {exc.message}", hint=exc.hint) from exc
        finally:
            response.close()
        return Downloaded(size, Digest.from_hasher(h))

    def chunks(self, url: str, *, what: str) -> Iterator[bytes]:
        response = self._open(url, what)
        try:
            yield from response.stream(self.limits.io_chunk_bytes)
        except TransportError as exc:
            raise self.error(f"{what}: {exc.message}", hint=exc.hint) from exc
        finally:
            response.close()

    # -- one GET, its credentials and redirects ------------------------------------

    def _open(self, url: str, what: str) -> Response:
        current = url
        for _ in range(self.limits.max_redirects + 1):
            response = self._get(current, what)
            if response.status in _REDIRECTS:
                location = response.headers.get("location")
                response.close()
                if not location:
                    raise self.error(f"{what}: {redact(current)} redirects nowhere")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                response.close()
                raise self.error(
                    f"{what}: GET {redact(current)}: HTTP {response.status}",
                    status=response.status,
                    hint=_hint(response.status),
                )
            return response
        raise self.error(
            f"{what}: {redact(url)} redirects more than {self.limits.max_redirects} times"
        )

    def _get(self, url: str, what: str) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(f"{what}: {redact(url)} is not an http(s) URL")
        host = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme == "http" and not (
            is_loopback_registry(host) or host in self.transport.tls.insecure_hosts
        ):
            raise self.error(
                f"{what}: {redact(url)} is plain HTTP",
                hint=f"use https://, or allow the host with --insecure-registry {host}",
            )
        bare = redact(url)
        creds = self._url_credentials(parts)
        headers = {"Authorization": creds.basic_header()} if creds else {}
        response = self._send(bare, host, headers, what)
        if response.status == 401 and not headers:
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
            stored = self._stored(host, what)
            if challenge is not None and challenge.scheme == "basic" and stored is not None:
                response.close()
                response = self._send(bare, host, {"Authorization": stored.basic_header()}, what)
        return response

    def _send(self, url: str, host: str, headers: dict[str, str], what: str) -> Response:
        try:
            return self.transport.request(
                "GET", url, host=host, headers=headers, stream=True, redirect=False
            )
        except TransportError as exc:
            raise self.error(f"{what}: {exc.message}", hint=exc.hint) from exc

    @staticmethod
    def _url_credentials(parts: SplitResult) -> Credentials | None:
        if parts.username is None:
            return None
        return Credentials(unquote(parts.username), unquote(parts.password or ""), source="URL")

    def _stored(self, host: str, what: str) -> Credentials | None:
        if host not in self._credentials:
            try:
                self._credentials[host] = lookup_credentials(host)
            except AuthError as exc:
                raise self.error(f"{what}: {exc.message}") from exc
        return self._credentials[host]


def _hint(status: int) -> str | None:
    if status in (401, 403):
        return (
            "give credentials for the host in ~/.docker/config.json or $REGISTRY_AUTH_FILE "
            "(docker login / podman login), or user:password@ in the URL"
        )
    if status == 404:
        return "check the URL"
    return None
