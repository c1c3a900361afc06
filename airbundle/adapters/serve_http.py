"""The HTTP side of `serve` (aiohttp): the registry API, git smart HTTP and `/`.

One small handler per resource (ping, catalog, tags, manifests, blobs,
referrers), each answering HEAD as GET without the body; protocol values come
from format/distribution.py and errors are rendered in one place
(`_errors`) as the spec's JSON. Handlers only read a ContentStore; blob bytes
go out by sendfile whenever the store can name file spans for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import select
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from airbundle.adapters.content import Blob, ContentStore, FileSpan
from airbundle.adapters.git_serve import CgiRequest, http_backend, is_push
from airbundle.adapters.serve_page import render_html
from airbundle.adapters.serve_static import folder_handler
from airbundle.errors import AirbundleError
from airbundle.format import distribution as dist
from airbundle.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("airbundle.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PageData = Callable[[], dict[str, Any]]
_OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class AppConfig:
    store: ContentStore
    page: PageData
    users: dict[str, bytes] | None = None  # htpasswd: user -> bcrypt hash
    realm: str = "airbundle"
    limits: Limits = DEFAULT_LIMITS
    # Read-only folders by URL prefix: "charts" (import --charts), "files".
    folders: dict[str, Path] = field(default_factory=dict)


class Authenticator:
    """Basic credentials checked against bcrypt hashes. bcrypt is slow on
    purpose; a pull makes dozens of requests, so a successful check is
    remembered (keyed by a keyed hash of the credentials, never the password)."""

    def __init__(self, users: dict[str, bytes], *, max_cached: int) -> None:
        self.users = users
        self.max_cached = max_cached
        self._key = hashlib.sha256(b"".join(sorted(users.values()))).digest()
        self._ok: OrderedDict[bytes, str] = OrderedDict()

    async def user(self, header: str | None) -> str | None:
        creds = dist.parse_basic(header)
        if creds is None:
            return None
        name, password = creds
        token = hmac.new(self._key, f"{name}\0{password}".encode(), "sha256").digest()
        if token in self._ok:
            self._ok.move_to_end(token)
            return name
        hashed = self.users.get(name)
        if hashed is None:
            return None
        import bcrypt  # only with --htpasswd

        ok = await asyncio.get_running_loop().run_in_executor(
            None, bcrypt.checkpw, password.encode(), hashed.replace(b"$2y$", b"$2b$", 1)
        )
        if not ok:
            return None
        self._ok[token] = name
        while len(self._ok) > self.max_cached:
            self._ok.popitem(last=False)
        return name


# --- errors, in one place -------------------------------------------------------------


def _error_response(error: dist.ApiError, realm: str) -> web.Response:
    headers = {**error.headers, "Content-Type": dist.ERROR_CONTENT_TYPE}
    if error.code is dist.UNAUTHORIZED:
        headers["WWW-Authenticate"] = f'Basic realm="{realm}"'
    if error.code is dist.UNSUPPORTED:
        headers["Allow"] = "GET, HEAD"
    return web.Response(
        status=error.code.status, body=dist.error_body(error.code, error.detail), headers=headers
    )


# --- blobs by sendfile ---------------------------------------------------------------


# A client that takes no byte for this long is dropped (its thread is freed).
STALL_SECONDS = 300.0


def _sendfile(sock: int, fd: int, ranges: Sequence[tuple[int, int]]) -> int:
    """sendfile(2) of each (offset, count) of `fd`, in order, to `sock` (duplicates
    this closes), in a worker thread: the kernel copies run on every core, not
    only the event loop's (8 clients pulling 4 GiB: 2.2-2.3 s against 2.8-3.8 s
    with asyncio's loop.sendfile on two cores). Several ranges of one file (a
    bundle's raw blocks) go in one thread hop."""
    total = 0
    try:
        for offset, count in ranges:
            sent = 0
            while sent < count:
                try:
                    n = os.sendfile(sock, fd, offset + sent, count - sent)
                except BlockingIOError:
                    _, writable, _ = select.select([], [sock], [], STALL_SECONDS)
                    if not writable:
                        raise TimeoutError(
                            f"client took nothing for {STALL_SECONDS:.0f} s"
                        ) from None
                    continue
                if n == 0:
                    return total + sent  # the file is shorter: the caller cuts the connection
                sent += n
            total += sent
    finally:
        os.close(sock)
        os.close(fd)
    return total


def _runs(spans: Sequence[FileSpan]) -> list[list[FileSpan]]:
    """Consecutive spans of one file, together."""
    runs: list[list[FileSpan]] = []
    for span in spans:
        if runs and (runs[-1][0].path, runs[-1][0].fd) == (span.path, span.fd):
            runs[-1].append(span)
        else:
            runs.append([span])
    return runs


def _open_span(span: FileSpan) -> int:
    """A descriptor for the span's file: a duplicate of the one the store holds
    (the file it checked), or the path opened now."""
    if span.fd is not None:
        return os.dup(span.fd)
    return os.open(span.path, os.O_RDONLY | os.O_CLOEXEC)


class BlobResponse(web.StreamResponse):
    """Bytes [start, end) of a blob: file spans by sendfile (zero-copy, in worker
    threads; through asyncio's copy under TLS), else the store's checked chunks."""

    def __init__(
        self,
        blob: Blob,
        start: int,
        end: int,
        *,
        status: int,
        headers: dict[str, str],
        pool: ThreadPoolExecutor,
    ):
        super().__init__(status=status, headers=headers)
        self.pool = pool
        self.blob = blob
        self.start = start
        self.end = end
        self.content_length = end - start

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        if request.method == "HEAD" or self.end == self.start:
            return writer
        spans = self.blob.spans(self.start, self.end)
        if spans is not None:
            await self._send_spans(request, spans)
        else:
            await self._send_chunks(self.blob.chunks(self.start, self.end))
        await super().write_eof()
        return writer

    async def _send_spans(self, request: web.BaseRequest, spans: Sequence[FileSpan]) -> None:
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        sock = transport.get_extra_info("socket")
        plain = sock is not None and transport.get_extra_info("sslcontext") is None
        if plain:
            # The headers must be on the wire before sendfile(2) writes behind
            # the transport's back; they are a few hundred bytes.
            while transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
        for run in _runs(spans):
            want = sum(span.length for span in run)
            if plain:
                # Duplicates, closed by _sendfile in its thread even if this request
                # is cancelled: a number closed early could name another client's
                # connection or another file.
                out = os.dup(sock.fileno())
                try:
                    fd = _open_span(run[0])
                except BaseException:
                    os.close(out)
                    raise
                sent = await loop.run_in_executor(
                    self.pool, _sendfile, out, fd, [(span.offset, span.length) for span in run]
                )
            else:  # TLS: asyncio copies through the SSL transport
                with os.fdopen(_open_span(run[0]), "rb") as fh:
                    sent = 0
                    for span in run:
                        n = await loop.sendfile(transport, fh, span.offset, span.length)
                        sent += n
                        if n != span.length:
                            break
            if sent != want:
                # Never end a response short with a clean close: cut the connection.
                transport.abort()
                raise ConnectionResetError(f"{run[0].path}: short read ({sent} of {want} bytes)")

    async def _send_chunks(self, chunks: Iterator[bytes]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.run_in_executor(None, next, chunks, None)
            if chunk is None:
                return
            await self.write(chunk)

    async def write_eof(self, data: bytes = b"") -> None:
        if not self._eof_sent:
            await super().write_eof(data)


# --- the application -------------------------------------------------------------------


class Server:
    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.store = config.store
        self.auth = (
            Authenticator(config.users, max_cached=config.limits.max_auth_cache_entries)
            if config.users
            else None
        )
        self._refreshing = asyncio.Lock()
        self.pool = ThreadPoolExecutor(config.limits.max_send_threads, "serve-send")
        self.checks = ThreadPoolExecutor(config.limits.max_check_threads, "serve-check")
        self._seen: object = ("never read",)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=1 << 20)
        app.router.add_route("*", "/v2", self.registry)
        app.router.add_route("*", "/v2/{tail:.*}", self.registry)
        app.router.add_route("*", "/git/{tail:.*}", self.git)
        for prefix, root in self.config.folders.items():
            handler = folder_handler(root, prefix)
            app.router.add_route("*", f"/{prefix}", handler)
            app.router.add_route("*", f"/{prefix}/{{tail:.*}}", handler)
        app.router.add_get("/", self.page)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        registry = request.path.startswith("/v2")
        try:
            if self.auth is not None:
                user = await self.auth.user(request.headers.get("Authorization"))
                if user is None:
                    raise dist.ApiError(
                        dist.UNAUTHORIZED, "this server requires a user and password"
                    )
                request["user"] = user
            return await handler(request)
        except dist.ApiError as exc:
            if registry:
                return _error_response(exc, self.config.realm)
            headers = {}
            if exc.code is dist.UNAUTHORIZED:
                headers["WWW-Authenticate"] = f'Basic realm="{self.config.realm}"'
            return web.Response(status=exc.code.status, text=exc.message + "\n", headers=headers)
        except web.HTTPException as exc:
            if registry and exc.status == 404:
                return _error_response(dist.ApiError(dist.NOT_FOUND, request.path[:200]), "")
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path[:200])
            raise

    async def _fresh(self) -> None:
        """Read the store again if an import changed it since the last request."""
        if self.store.revision() == self._seen:
            return
        async with self._refreshing:
            revision = self.store.revision()
            if revision == self._seen:
                return
            warnings = await asyncio.get_running_loop().run_in_executor(None, self.store.refresh)
            for warning in warnings:
                log.warning("%s", warning)
            self._seen = revision
            log.info("content of %s (re)read", self.store.describe())

    # --- registry ---------------------------------------------------------------------

    async def registry(self, request: web.Request) -> web.StreamResponse:
        route = dist.parse_route(request.path)
        if request.method not in ("GET", "HEAD") or route.kind == "upload":
            raise dist.ApiError(
                dist.UNSUPPORTED,
                f"{request.method} {request.path[:200]}: this registry is read-only",
            )
        await self._fresh()
        handler = {
            "ping": self._ping,
            "catalog": self._catalog,
            "tags": self._tags,
            "manifest": self._manifest,
            "blob": self._blob,
            "referrers": self._referrers,
        }[route.kind]
        response = await handler(request, route)
        response.headers[dist.API_VERSION_HEADER[0]] = dist.API_VERSION_HEADER[1]
        return response

    async def _ping(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        return web.json_response({})

    def _page(
        self, request: web.Request, names: list[str], key: str, extra: dict[str, Any]
    ) -> web.Response:
        page = dist.parse_page(request.query, max_n=self.config.limits.max_page_entries)
        items, more = dist.paginate(names, page)
        headers = {}
        if more and items and page.n is not None:
            headers["Link"] = dist.next_link(request.path, page.n, items[-1])
        return web.json_response({**extra, key: items}, headers=headers)

    async def _catalog(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        return self._page(request, self.store.repositories(), "repositories", {})

    async def _tags(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        tags = self.store.tags(route.name)
        if tags is None:
            raise dist.ApiError(dist.NAME_UNKNOWN, route.name)
        return self._page(request, tags, "tags", {"name": route.name})

    def _known(self, name: str) -> None:
        if self.store.tags(name) is None:
            raise dist.ApiError(dist.NAME_UNKNOWN, name)

    async def _manifest(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        self._known(route.name)
        manifest = self.store.manifest(route.name, route.reference)
        if manifest is None:
            raise dist.ApiError(dist.MANIFEST_UNKNOWN, f"{route.name}:{route.reference}")
        headers = {
            "Content-Type": manifest.media_type,
            "Docker-Content-Digest": str(manifest.digest),
            "ETag": f'"{manifest.digest}"',
        }
        # aiohttp keeps Content-Length and drops the body for HEAD.
        return web.Response(body=manifest.data, headers=headers)

    async def _blob(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        self._known(route.name)
        digest = route.digest
        assert digest is not None
        blob = self.store.blob(route.name, digest)
        if blob is None:
            raise dist.ApiError(dist.BLOB_UNKNOWN, f"{route.name}@{digest}")
        try:
            # A bundle member is hashed in full the first time: off the event loop.
            await asyncio.get_running_loop().run_in_executor(self.checks, blob.check)
        except AirbundleError as exc:
            log.error("%s %s refused: %s", request.method, request.path[:200], exc.message)
            raise dist.ApiError(
                dist.UNKNOWN, f"{route.name}@{digest} cannot be served: {exc.message}"
            ) from None
        headers = {
            "Content-Type": _OCTETS,
            "Docker-Content-Digest": str(digest),
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
        }
        try:
            wanted = dist.parse_range(request.headers.get("Range"), blob.size)
        except dist.ApiError as exc:
            raise dist.ApiError(
                exc.code, exc.detail, headers={"Content-Range": f"bytes */{blob.size}"}
            ) from None
        if wanted is None:
            return BlobResponse(blob, 0, blob.size, status=200, headers=headers, pool=self.pool)
        start, end = wanted
        headers["Content-Range"] = dist.content_range(start, end, blob.size)
        return BlobResponse(blob, start, end, status=206, headers=headers, pool=self.pool)

    async def _referrers(self, request: web.Request, route: dist.Route) -> web.StreamResponse:
        digest = route.digest
        assert digest is not None
        found = self.store.referrers(route.name, digest)
        wanted = request.query.get("artifactType")
        headers = {"Content-Type": dist.REFERRERS_CONTENT_TYPE}
        if wanted:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers[dist.FILTERS_APPLIED_HEADER] = "artifactType"
        return web.Response(body=dist.referrers_index(found), headers=headers)

    # --- git ----------------------------------------------------------------------------

    async def git(self, request: web.Request) -> web.StreamResponse:
        path_info = "/" + request.match_info["tail"]
        name = path_info[1:].split("/", 1)[0].removesuffix(".git")
        if is_push(path_info, request.query):
            raise dist.ApiError(dist.DENIED, "this git server is read-only: pushes are refused")
        try:
            # A bundle's repo is indexed on first use; a layout's is checked by git.
            repo = await asyncio.get_running_loop().run_in_executor(
                self.checks, self.store.git_dir, name
            )
        except AirbundleError as exc:
            log.error("%s %s refused: %s", request.method, request.path[:200], exc.message)
            raise dist.ApiError(
                dist.UNKNOWN, f"git repository {name!r} cannot be served: {exc.message}"
            ) from None
        if repo is None or not path_info.startswith(f"/{name}.git/"):
            raise dist.ApiError(dist.NOT_FOUND, f"no git repository {name!r} here")
        cgi = CgiRequest(
            method=request.method,
            root=repo.parent,
            path_info=f"/{repo.name}/{path_info.split('/', 2)[2]}",
            query=request.query_string,
            content_type=request.headers.get("Content-Type", ""),
            content_encoding=request.headers.get("Content-Encoding", ""),
            git_protocol=request.headers.get("Git-Protocol", ""),
            remote_user=request.get("user", ""),
            remote_addr=request.remote or "",
        )
        answer = await http_backend(cgi, _body(request, self.config.limits.max_git_request_bytes))
        response = web.StreamResponse(status=answer.status)
        for key, value in answer.headers:
            response.headers.add(key, value)
        await response.prepare(request)
        async for chunk in answer.body:
            await response.write(chunk)
        await response.write_eof()
        return response

    # --- the page ----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        await self._fresh()
        data = await asyncio.get_running_loop().run_in_executor(None, self.config.page)
        kind = dist.preferred(request.headers.get("Accept"), ["text/html", "application/json"])
        if kind == "application/json":
            return web.Response(
                text=json.dumps(data, indent=1, sort_keys=True) + "\n",
                content_type="application/json",
            )
        return web.Response(text=render_html(data), content_type="text/html", charset="utf-8")


async def _body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client sending more than `limit` (a
    fetch negotiation is far smaller) is cut off."""
    seen = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        seen += len(chunk)
        if seen > limit:
            log.warning("%s: request body over %d bytes refused", request.path[:200], limit)
            return
        yield chunk
