"""A small OCI distribution API client: manifests, blobs, uploads, mounts.

It speaks only what airbundle needs, checks every digest it is given against
the bytes it receives, and raises one error class chosen by the caller
(SourceError on export, TargetError on import).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from airbundle.adapters.registry.auth import (
    Credentials,
    TokenCache,
    lookup_credentials,
    parse_challenge,
)
from airbundle.adapters.registry.replay import ReplayWindow, SourceFailure
from airbundle.adapters.registry.transport import Response, Transport, retry_after
from airbundle.errors import (
    AirbundleError,
    AuthError,
    FormatError,
    ResponseTooLargeError,
    TransportError,
    UploadLostError,
)
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from airbundle.limits import DEFAULT_LIMITS, Limits


class _BodyReadError(Exception):
    """The connection broke while a response body was read (worth one more GET)."""


class _SessionLostError(Exception):
    """The registry no longer knows the upload session."""


MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
_UNSET = object()


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class _Refusal:
    """What a registry said when it refused: its error codes, and text for people."""

    text: str
    codes: tuple[str, ...] = ()


def _registry_errors(response: Response, body: bytes) -> _Refusal:
    try:
        doc = json.loads(body)
        errors = doc.get("errors") or []
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors]
        codes = tuple(str(e["code"]).upper() for e in errors if e.get("code"))
        if parts:
            return _Refusal("; ".join(parts), codes)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return _Refusal(text[:300] or f"HTTP {response.status}")


class RegistryClient:
    def __init__(
        self,
        host: str,
        transport: Transport,
        *,
        error: type[AirbundleError],
        credentials: Credentials | object | None = _UNSET,
        tokens: TokenCache | None = None,
        limits: Limits = DEFAULT_LIMITS,
        # Blobs below this go in one PUT; twice this of a streamed upload is
        # held in memory for a resend.
        buffer_bytes: int = DEFAULT_LIMITS.upload_buffer_bytes,
    ) -> None:
        self.host = host
        self.transport = transport
        self._error = error
        self._credentials = credentials
        self._tokens = tokens or TokenCache()
        self._limits = limits
        self._buffer = buffer_bytes
        self._basic = False
        self._base: str | None = None

    # -- plumbing ------------------------------------------------------------------

    @property
    def base(self) -> str:
        if self._base is None:
            try:
                self._base = self.transport.base_url(self.host)
            except TransportError as exc:
                raise self._error(f"registry {self.host}: {exc.message}", hint=exc.hint) from exc
        return self._base

    def credentials(self) -> Credentials | None:
        if self._credentials is _UNSET:
            try:
                self._credentials = lookup_credentials(self.host)
            except AuthError as exc:
                raise self._error(exc.message) from exc
        return self._credentials  # type: ignore[return-value]

    def _auth_header(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(self.host, scope)
        if token:
            return {"Authorization": f"Bearer {token}"}
        creds = self.credentials()
        if self._basic and creds:
            return {"Authorization": creds.basic_header()}
        return {}

    def _fetch_token(self, params: dict[str, str], scope: str) -> None:
        realm = params.get("realm")
        if not realm:
            raise self._error(f"registry {self.host}: Bearer challenge without a realm")
        creds = self.credentials()
        query = {"service": params.get("service", "")} if params.get("service") else {}
        scopes = [s for s in scope.split(" ") if s]
        headers: dict[str, str] = {}
        body = None
        method = "GET"
        if creds and creds.identity_token:
            method = "POST"
            body = urllib.parse.urlencode(
                {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": params.get("service", ""),
                    "scope": " ".join(scopes),
                    "client_id": "airbundle",
                }
            ).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = realm
        else:
            pairs = list(query.items()) + [("scope", s) for s in scopes]
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(pairs)
            if creds and creds.username is not None:
                headers["Authorization"] = creds.basic_header()
        token_host = urllib.parse.urlsplit(realm).netloc
        try:
            response = self.transport.request(
                method, url, host=token_host, headers=headers, body=body
            )
        except TransportError as exc:
            raise self._error(f"token server {realm}: {exc.message}", hint=exc.hint) from exc
        data = response.read_limited(self._limits.max_token_answer_bytes)
        if response.status != 200:
            who = f" with credentials from {creds.source}" if creds else " anonymously"
            refusal = _registry_errors(response, data)
            raise self._error(
                f"registry {self.host}: token server refused access to {scope}{who}: "
                f"{refusal.text}",
                hint="check the credentials (docker login / podman login, or auth.json)",
                status=response.status,
                codes=refusal.codes,
            )
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
            expires = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise self._error(f"token server {realm}: malformed response") from None
        if not isinstance(token, str) or not token:
            raise self._error(f"token server {realm}: response has no token")
        self._tokens.put(self.host, scope, token, expires)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        retry: bool = True,
        what: str,
    ) -> Response:
        """One request, authenticated as the registry asks (a 401 brings a token).

        A streamed body can be sent once: on its 401 the token is fetched and
        the 401 returned, as a 429 is, for the caller to resume the upload.
        """
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        once = body is not None and not isinstance(body, bytes)
        for attempt in range(3):
            all_headers = {**(headers or {}), **self._auth_header(scope)}
            sent_basic = all_headers.get("Authorization", "").startswith("Basic ")
            try:
                response = self.transport.request(
                    method,
                    url,
                    host=self.host,
                    headers=all_headers,
                    body=body,
                    stream=stream,
                    retry=retry,
                )
            except TransportError as exc:
                raise self._error(f"{what}: {exc.message}", hint=exc.hint) from exc
            if response.status != 401 or attempt == 2:
                break
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
            response.raw.drain_conn()
            response.close()
            if challenge is None:
                break
            if challenge.scheme == "bearer":
                if self._tokens.get(self.host, scope) and attempt > 0:
                    break
                self._fetch_token(challenge.params, scope)
            elif challenge.scheme == "basic":
                # Another thread may have switched to Basic meanwhile: what
                # matters is whether *this* request carried the credentials.
                if self.credentials() is None or sent_basic:
                    break
                self._basic = True
            if once:
                return response
        if response.status == 401:
            body = response.read_limited(self._limits.max_registry_error_bytes)
            refusal = _registry_errors(response, body)
            creds = self.credentials()
            who = f"credentials from {creds.source}" if creds else "no credentials"
            raise self._error(
                f"{what}: registry {self.host} requires authentication ({who}): {refusal.text}",
                hint="log in with `docker login` / `podman login`, or set REGISTRY_AUTH_FILE",
                status=401,
                codes=refusal.codes,
            )
        if response.status == 429 and not once:
            raise self._error(
                f"{what}: registry {self.host} says toomanyrequests (rate limit) after "
                f"{self.transport.retry.attempts} attempts",
                hint="wait and re-run (work done so far is kept), or authenticate to get a "
                "higher limit",
                status=429,
            )
        return response

    def fail(self, response: Response, what: str) -> AirbundleError:
        """The error for an answer the caller did not expect, with its status and
        the registry's error codes (for code to decide on) and reason (for people)."""
        limit = self._limits.max_registry_error_bytes
        data = response.read_limited(limit) if response.status != 204 else b""
        refusal = _registry_errors(response, data)
        return self._error(
            f"{what}: HTTP {response.status}: {refusal.text}",
            status=response.status,
            codes=refusal.codes,
        )

    @staticmethod
    def scope(repo: str, actions: str = "pull") -> str:
        return f"repository:{repo}:{actions}"

    # -- manifests ----------------------------------------------------------------

    def get_manifest(
        self, repo: str, reference: str, *, expect: Digest | None = None
    ) -> FetchedManifest:
        what = (
            f"{self.host}/{repo}:{reference}" if expect is None else f"{self.host}/{repo}@{expect}"
        )
        # A body cut short is fetched again: the GET is idempotent.
        for attempt in range(self.transport.retry.attempts):
            try:
                return self._get_manifest_once(repo, reference, expect, what)
            except _BodyReadError as exc:
                if attempt + 1 == self.transport.retry.attempts:
                    raise self._error(f"{what}: {exc.args[0]}") from exc
                self.transport.sleep(self.transport.retry.backoff * (attempt + 1))
        raise AssertionError("unreachable")

    def _get_manifest_once(
        self, repo: str, reference: str, expect: Digest | None, what: str
    ) -> FetchedManifest:
        response = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scope=self.scope(repo),
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
            what=what,
        )
        if response.status == 404:
            response.close()
            raise self._error(f"{what}: manifest not found (HTTP 404)", status=404)
        if response.status != 200:
            raise self.fail(response, what)
        try:
            data = response.read_limited(self._limits.max_oci_manifest_bytes)
        except ResponseTooLargeError as exc:
            raise self._error(f"{what}: {exc.message}") from exc
        except TransportError as exc:
            raise _BodyReadError(exc.message) from exc
        digest = Digest.sha256_of(data)
        if expect is not None and digest != expect:
            raise self._error(f"{what}: registry returned a manifest with digest {digest}")
        told = response.headers.get("docker-content-digest")
        if told and told.startswith("sha256:") and told != str(digest):
            # By tag there is nothing else to check the bytes against.
            raise self._error(
                f"{what}: registry says the manifest is {told}, its bytes hash to {digest}"
            )
        media_type = (response.headers.get("content-type") or "").split(";")[0].strip()
        return FetchedManifest(data, media_type, digest)

    def find_manifest(
        self, repo: str, reference: str, *, expect: Digest | None = None
    ) -> FetchedManifest | None:
        """A manifest by tag or digest, or None if the registry has no such thing."""
        try:
            return self.get_manifest(repo, reference, expect=expect)
        except AirbundleError as exc:
            if exc.status == 404 or "MANIFEST_UNKNOWN" in exc.codes:
                return None
            raise

    def referrers(self, repo: str, digest: Digest) -> FetchedManifest | None:
        """The OCI 1.1 referrers index of `digest`, or None where the registry
        does not offer the API (then the fallback tag is the place to look)."""
        what = f"referrers of {self.host}/{repo}@{digest}"
        response = self.request(
            "GET",
            f"/v2/{repo}/referrers/{digest}",
            scope=self.scope(repo),
            headers={"Accept": OCI_INDEX},
            stream=True,
            what=what,
        )
        if response.status != 200:
            response.close()
            return None
        data = response.read_limited(self._limits.max_oci_manifest_bytes)
        return FetchedManifest(data, OCI_INDEX, Digest.sha256_of(data))

    def manifest_exists(self, repo: str, digest: Digest) -> bool:
        what = f"{self.host}/{repo}@{digest}"
        response = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{digest}",
            scope=self.scope(repo),
            headers={"Accept": MANIFEST_ACCEPT},
            what=what,
        )
        response.close()
        return response.status == 200

    def manifest_digest(self, repo: str, reference: str) -> Digest | None:
        """What `reference` (a tag or a digest) resolves to in `repo` now, or None
        if the registry does not know it: a HEAD, and a GET only when the
        registry leaves out Docker-Content-Digest."""
        what = f"{self.host}/{repo}:{reference}"
        response = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            scope=self.scope(repo),
            headers={"Accept": MANIFEST_ACCEPT},
            what=what,
        )
        response.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._error(f"{what}: HEAD manifest: HTTP {response.status}")
        told = response.headers.get("docker-content-digest") or ""
        try:
            return Digest.parse(told)
        except FormatError:
            return self.get_manifest(repo, reference).digest

    def put_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> Digest:
        what = f"push manifest {self.host}/{repo}:{reference}"
        response = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scope=self.scope(repo, "pull,push"),
            headers={"Content-Type": media_type},
            body=data,
            what=what,
        )
        if response.status not in (200, 201):
            raise self.fail(response, what)
        response.close()
        expected = Digest.sha256_of(data)
        told = response.headers.get("docker-content-digest")
        if told and told != str(expected):
            raise self._error(f"{what}: registry stored digest {told}, we sent {expected}")
        return expected

    # -- listings -----------------------------------------------------------------

    def catalog(self) -> list[str]:
        """Every repository the registry lists (GET /v2/_catalog, page by page)."""
        return self._listing(
            f"/v2/_catalog?n={self._limits.registry_page_entries}",
            "repositories",
            scope="registry:catalog:*",
            what=f"list repositories of {self.host}",
        )

    def tags(self, repo: str) -> list[str]:
        """The tags of `repo`; none where the registry lists none for it (the
        repository went away meanwhile, or these credentials cannot read it)."""
        return self._listing(
            f"/v2/{repo}/tags/list",
            "tags",
            scope=self.scope(repo),
            what=f"tags of {self.host}/{repo}",
            missing_ok=True,
        )

    def _listing(
        self, url: str, key: str, *, scope: str, what: str, missing_ok: bool = False
    ) -> list[str]:
        """The names under `key` in a paged listing, following `Link: <...>;
        rel="next"` headers; an answer that is not such a list is an error."""
        names: list[str] = []
        next_url: str | None = url
        limit = self._limits.max_registry_listing_bytes
        while next_url:
            response = self.request("GET", next_url, scope=scope, what=what)
            if response.status != 200:
                if missing_ok:
                    response.close()
                    return names
                raise self.fail(response, what)
            try:
                data = response.read_limited(limit)
            except TransportError as exc:
                raise self._error(f"{what}: {exc.message}") from exc
            doc = loads_strict(
                data,
                what=f"{what}: the registry's answer",
                max_bytes=limit,
                max_depth=self._limits.max_json_depth,
                error=self._error,
            )
            if isinstance(doc, dict):
                schemas.check(schemas.REGISTRY_LIST, doc, what=what, error=self._error)
            # distribution answers {"tags": null} for a repository without tags.
            page = (doc.get(key) or []) if isinstance(doc, dict) else None
            if not isinstance(page, list) or not all(isinstance(n, str) for n in page):
                raise self._error(f"{what}: the registry's answer holds no list of {key}")
            names += page
            next_url = _next_link(response.headers.get("link", ""))
        return names

    # -- blobs --------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        what = f"{self.host}/{repo}@{digest}"
        response = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scope=self.scope(repo), what=what
        )
        response.close()
        if response.status in (200, 404):
            return response.status == 200
        raise self._error(f"{what}: HEAD blob: HTTP {response.status}", status=response.status)

    def blob_chunks(self, repo: str, digest: Digest, size: int) -> Iterator[bytes]:
        """The blob's bytes; an interrupted download resumes with a Range request."""
        what = f"{self.host}/{repo}@{digest}"
        offset = 0
        failures = 0
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self.request(
                "GET",
                f"/v2/{repo}/blobs/{digest}",
                scope=self.scope(repo),
                headers=headers,
                stream=True,
                what=what,
            )
            if response.status not in (200, 206):
                raise self.fail(response, f"{what}: GET blob")
            skip = offset if (offset and response.status == 200) else 0
            try:
                for chunk in response.stream(self._limits.io_chunk_bytes):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    offset += len(chunk)
                    yield chunk
                response.close()
                return
            except TransportError as exc:
                failures += 1
                if failures >= self.transport.retry.attempts or offset >= size:
                    raise self._error(
                        f"{what}: download failed at byte {offset}: {exc.message}"
                    ) from exc
                self.transport.sleep(self.transport.retry.backoff * failures)

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> bool:
        """Cross-repository mount; True if the registry linked the blob."""
        what = f"mount {digest} from {from_repo} into {self.host}/{repo}"
        scope = f"{self.scope(repo, 'pull,push')} {self.scope(from_repo)}"
        query = urllib.parse.urlencode({"mount": str(digest), "from": from_repo})
        response = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?{query}",
            scope=scope,
            headers={"Content-Length": "0"},
            body=b"",
            what=what,
        )
        response.close()
        if response.status == 201:
            return True
        if response.status == 202:
            # The registry opened an upload instead; cancel it, we upload normally.
            location = response.headers.get("location")
            if location:
                cancel = self.request(
                    "DELETE",
                    self._absolute(location),
                    scope=self.scope(repo, "pull,push"),
                    what=what,
                    retry=False,
                )
                cancel.close()
            return False
        raise self._error(f"{what}: HTTP {response.status}", status=response.status)

    def _absolute(self, location: str) -> str:
        return urllib.parse.urljoin(self.base + "/", location)

    def _start_upload(self, repo: str, what: str) -> str:
        response = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=self.scope(repo, "pull,push"),
            headers={"Content-Length": "0"},
            body=b"",
            what=what,
        )
        if response.status != 202 or not response.headers.get("location"):
            raise self.fail(response, f"{what}: start upload")
        response.close()
        return self._absolute(response.headers["location"])

    @staticmethod
    def _with_digest(location: str, digest: Digest) -> str:
        sep = "&" if "?" in location else "?"
        return f"{location}{sep}{urllib.parse.urlencode({'digest': str(digest)})}"

    def upload_blob(self, repo: str, digest: Digest, size: int, chunks: Iterable[bytes]) -> None:
        """Upload a blob whose bytes arrive once, as a stream.

        Small blobs go in one monolithic PUT (retried whole); large ones in
        one streamed PATCH, as docker and skopeo send them: per request a
        registry does work of its own (distribution: ~4 ms of CPU, so 8 MiB
        chunks cost 25 % of the upload), and some registries take no second
        chunk at all. The last bytes sent stay in memory for a resend.
        """
        what = f"upload {digest} to {self.host}/{repo}"
        if size < self._buffer:
            data = b"".join(chunks)
            if len(data) != size:
                raise self._error(f"{what}: got {len(data)} bytes, expected {size}")
            for attempt in range(self.transport.retry.attempts):
                location = self._start_upload(repo, what)
                if self._finish(location, digest, data, repo, what):
                    return
                self.transport.sleep(self.transport.retry.backoff * (attempt + 1))
            raise self._error(f"{what}: registry kept failing")
        location = self._stream(repo, ReplayWindow(chunks, size, 2 * self._buffer), what)
        # No second hash here: the bytes come from a stream that raises before
        # its end if they do not match, and the registry checks the digest on
        # the final PUT before it stores anything.
        for attempt in range(self.transport.retry.attempts):
            if self._finish(location, digest, b"", repo, what):
                return
            self.transport.sleep(self.transport.retry.backoff * (attempt + 1))
        raise self._error(f"{what}: the registry did not confirm the upload; re-run the import")

    def _stream(self, repo: str, window: ReplayWindow, what: str) -> str:
        """PATCH the whole blob into a fresh session; the Location to finish it at.

        After a failure, ask the registry how much it kept and resend from
        there while the window still holds those bytes; a lost session
        starts again only while the window still holds the first byte. Past
        that, a re-run of the import continues (what is stored is kept).
        """
        location = self._start_upload(repo, what)
        offset = 0
        for attempt in range(self.transport.retry.attempts + 1):
            if attempt:
                self.transport.sleep(self.transport.retry.backoff * attempt)
                try:
                    location, offset = self._resume_point(location, window, repo, what)
                except _SessionLostError as lost:
                    if not window.can_resend_from(0):
                        raise UploadLostError(
                            f"{what}: upload session lost ({lost.args[0]}) after "
                            f"{window.read} bytes, more than memory holds",
                            hint="re-run the import: what is stored stays",
                        ) from None
                    location, offset = self._start_upload(repo, what), 0
            if offset == window.size:
                return location
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(window.size - offset),
            }
            if offset:
                headers["Content-Range"] = f"{offset}-{window.size - 1}"
            try:
                response = self.request(
                    "PATCH",
                    location,
                    scope=self.scope(repo, "pull,push"),
                    headers=headers,
                    body=window.body(offset),
                    what=what,
                    retry=False,
                )
            except SourceFailure as exc:  # the bundle's side, not the network
                if isinstance(exc.failure, ValueError):  # the member's size is wrong
                    raise self._error(f"{what}: {exc.failure}") from None
                raise exc.failure from None
            except AirbundleError as exc:
                if not isinstance(exc.__cause__, TransportError):
                    raise
                continue
            if response.status not in (202, 401, 429, 500, 502, 503, 504):
                raise self.fail(response, f"{what}: PATCH")  # reads the registry's reason
            response.close()
            if response.status == 202:
                location = self._absolute(response.headers.get("location") or location)
                if _acknowledged(response) in (None, window.size):
                    return location
                continue
            if response.status == 429:
                wait = retry_after(response.headers)
                if wait:
                    self.transport.sleep(min(wait, self.transport.retry.max_wait))
        raise self._error(f"{what}: the upload kept failing after {window.read} bytes")

    def _resume_point(
        self, location: str, window: ReplayWindow, repo: str, what: str
    ) -> tuple[str, int]:
        """The session's newest Location and the offset the registry holds."""
        status = self.request("GET", location, scope=self.scope(repo, "pull,push"), what=what)
        status.close()
        if status.status != 204:
            raise _SessionLostError(f"HTTP {status.status}")
        held = _acknowledged(status) or 0
        if held == 0:
            # A session holding nothing is worth no more than a new one, and
            # distribution's "0-0" may mean one byte: start clean.
            raise _SessionLostError("the registry kept none of it")
        if not window.can_resend_from(held):
            raise UploadLostError(
                f"{what}: the registry holds {held} bytes of the blob, memory holds "
                f"{window.start} to {window.read}",
                hint="re-run the import: what is stored stays",
            )
        return self._absolute(status.headers.get("location") or location), held

    def _finish(self, location: str, digest: Digest, body: bytes, repo: str, what: str) -> bool:
        """PUT that completes an upload session. True when the blob is stored.

        Not retried blindly: if the answer is lost, the session may already be
        closed, so we ask whether the blob exists instead of repeating the PUT.
        """
        headers = {"Content-Type": "application/octet-stream"} if body else {"Content-Length": "0"}
        try:
            response = self.request(
                "PUT",
                self._with_digest(location, digest),
                scope=self.scope(repo, "pull,push"),
                headers=headers,
                body=body,
                what=what,
                retry=False,
            )
        except AirbundleError:
            return self.blob_exists(repo, digest)
        if response.status == 201:
            response.close()
            self._check_stored(response, digest, what)
            return True
        if response.status in (404, 500, 502, 503, 504, 429):
            response.close()
            if self.blob_exists(repo, digest):
                return True
            if body or response.status != 404:
                return False
            raise self._error(f"{what}: the upload session was lost; re-run the import")
        raise self.fail(response, f"{what}: finish upload")

    def _check_stored(self, response: Response, digest: Digest, what: str) -> None:
        told = response.headers.get("docker-content-digest")
        if told and told != str(digest):
            raise self._error(f"{what}: registry stored the blob as {told}")


def _acknowledged(response: Response) -> int | None:
    """How many bytes an upload session holds, from its Range header.

    distribution answers "0-0" for an empty session as for a one-byte one:
    read it as empty (a resend of that byte would be refused, not stored).
    """
    value = response.headers.get("range")
    if not value:
        return None
    value = value.removeprefix("bytes=")
    end = value.rsplit("-", 1)[-1]
    if not end.isdigit():
        return None
    return 0 if value == "0-0" else int(end) + 1


def _next_link(header: str) -> str | None:
    """The target of a `Link: <URL>; rel="next"` header (the next page), if any."""
    for link in header.split(","):
        target, _, params = link.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return target.strip().strip("<>") or None
    return None
