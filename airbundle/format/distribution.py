"""The OCI distribution-spec v1.1, pull side, as values and pure functions.

What `serve` needs to speak the protocol without touching a socket: the
routes under /v2/, the error codes and their JSON, `n`/`last` pagination and
its Link header, Range parsing, Accept negotiation, Basic credentials and
`htpasswd -B` lines. The HTTP adapter only maps these onto requests and
responses; everything here is testable with plain values.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from airbundle.errors import FormatError, InvalidDigestError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

MANIFEST_MEDIA_TYPES: Final = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
ERROR_CONTENT_TYPE: Final = "application/json"
API_VERSION_HEADER: Final = ("Docker-Distribution-API-Version", "registry/2.0")
FILTERS_APPLIED_HEADER: Final = "OCI-Filters-Applied"
REFERRERS_CONTENT_TYPE: Final = OCI_INDEX

# distribution-spec: <name> is path components of this grammar joined by '/'.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_NAME_LENGTH: Final = 255


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the spec's error code table, with the HTTP status it goes with."""

    code: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
PAGINATION_NUMBER_INVALID = ErrorCode(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)
# Not in the spec's table; distribution answers an unsatisfiable range with it.
RANGE_INVALID = ErrorCode("RANGE_INVALID", 416, "requested range not satisfiable")
NOT_FOUND = ErrorCode("NOT_FOUND", 404, "no such route")
# Not in the spec's table; distribution answers a storage failure with it (its
# errcode.ErrorCodeUnknown): here, content that failed its verification.
UNKNOWN = ErrorCode("UNKNOWN", 500, "unknown error")


class ApiError(FormatError):
    """A request the registry API answers with an error code (rendered in one place)."""

    def __init__(
        self, code: ErrorCode, detail: str = "", *, headers: Mapping[str, str] | None = None
    ) -> None:
        # status and codes: the facts every AirbundleError carries (errors.py).
        super().__init__(
            f"{code.code}: {detail or code.message}", status=code.status, codes=(code.code,)
        )
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_body(code: ErrorCode, detail: str = "") -> bytes:
    """`{"errors": [{"code", "message", "detail"}]}`, as the spec renders errors."""
    entry: dict[str, Any] = {"code": code.code, "message": code.message}
    if detail:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()


# --- routes ---------------------------------------------------------------------

RouteKind = Literal["ping", "catalog", "tags", "manifest", "blob", "upload", "referrers"]


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    name: str = ""
    reference: str = ""  # a tag or digest (manifest), a digest (blob, referrers)

    @property
    def digest(self) -> Digest | None:
        """The reference as a digest, or None for a tag."""
        return Digest.parse(self.reference) if ":" in self.reference else None


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise ApiError(NAME_INVALID, f"invalid repository name {name[:MAX_NAME_LENGTH]!r}")
    return name


def check_reference(reference: str, *, digest_only: bool = False) -> str:
    """A tag or a digest; a malformed digest is DIGEST_INVALID (400), a malformed
    tag is simply not known (404, as distribution's router answers)."""
    if ":" in reference:
        try:
            Digest.parse(reference)
        except InvalidDigestError as exc:
            raise ApiError(DIGEST_INVALID, exc.message) from None
        return reference
    if digest_only:
        raise ApiError(DIGEST_INVALID, f"{reference[:80]!r} is not a digest")
    if not _TAG.fullmatch(reference):
        raise ApiError(MANIFEST_UNKNOWN, f"{reference[:80]!r} is not a valid tag")
    return reference


def parse_route(path: str) -> Route:
    """Route of a request path under /v2/ (the path as sent, without the query)."""
    if path in ("/v2", "/v2/"):
        return Route("ping")
    if not path.startswith("/v2/"):
        raise ApiError(NOT_FOUND, path[:200])
    rest = path[4:]
    if rest in ("_catalog", "_catalog/"):
        return Route("catalog")
    if rest.endswith("/tags/list"):
        return Route("tags", check_name(rest[: -len("/tags/list")]))
    # The name may contain '/': the last fixed component decides the resource.
    for marker, kind in (
        ("/blobs/uploads", "upload"),
        ("/manifests/", "manifest"),
        ("/referrers/", "referrers"),
        ("/blobs/", "blob"),
    ):
        name, found, tail = rest.rpartition(marker)
        if not found or not name:
            continue
        if kind == "upload":
            return Route("upload", check_name(name))
        if not tail or "/" in tail:
            continue
        ref = check_reference(tail, digest_only=kind != "manifest")
        return Route(kind, check_name(name), ref)  # type: ignore[arg-type]
    raise ApiError(NOT_FOUND, path[:200])


# --- pagination -------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    n: int | None
    last: str | None


def parse_page(query: Mapping[str, str], *, max_n: int) -> Page:
    """`n` (at most `max_n`: larger requests get `max_n` and a Link to go on) and `last`."""
    text = query.get("n")
    n = None
    if text is not None:
        if not text.isdigit() or len(text) > 9:
            raise ApiError(PAGINATION_NUMBER_INVALID, f"n={text[:20]!r}")
        n = min(int(text), max_n)
    last = query.get("last") or None
    return Page(n, last)


def paginate(items: Iterable[str], page: Page) -> tuple[list[str], bool]:
    """The sorted items after `last`, at most `n`; and whether more follow."""
    ordered = sorted(items)
    if page.last is not None:
        ordered = [i for i in ordered if i > page.last]
    if page.n is None:
        return ordered, False
    return ordered[: page.n], len(ordered) > page.n


def next_link(path: str, n: int, last: str) -> str:
    """The `Link` header pointing at the next page."""
    query = urllib.parse.urlencode({"n": str(n), "last": last})
    return f'<{path}?{query}>; rel="next"'


# --- ranges ------------------------------------------------------------------------

_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`[start, end)` of a single `Range: bytes=` request, or None for the whole
    content. A syntactically odd or multi-part range is ignored (RFC 9110 lets a
    server send the whole representation); one that starts past the end is 416."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or len(header) > 100:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        count = int(last)
        if count == 0:
            raise ApiError(RANGE_INVALID, f"{header} of {size} bytes")
        return max(0, size - count), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise ApiError(RANGE_INVALID, f"{header} of {size} bytes")
    return start, end


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"


# --- content negotiation ------------------------------------------------------------


def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """Media ranges of an Accept header with their q values, in the order given."""
    if not header:
        return []
    out = []
    for part in header.split(",")[:64]:
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = max(0.0, min(1.0, float(value)))
                except ValueError:
                    q = 0.0
        out.append((media, q))
    return out


def _matches(pattern: str, offer: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return offer.split("/", 1)[0] == pattern[:-2]
    return pattern == offer


def preferred(header: str | None, offers: Sequence[str]) -> str | None:
    """The offer the client prefers most (ties: the first offer); the first offer if
    the client sent no Accept header; None if it accepts none of them."""
    ranges = parse_accept(header)
    if not ranges:
        return offers[0] if offers else None
    best: tuple[float, int, str] | None = None
    for index, offer in enumerate(offers):
        quality = max((q for pattern, q in ranges if _matches(pattern, offer)), default=0.0)
        if quality > 0 and (best is None or (quality, -index) > (best[0], -best[1])):
            best = (quality, index, offer)
    return best[2] if best else None


# --- referrers -----------------------------------------------------------------------


def referrer_descriptor(
    doc: Mapping[str, Any], *, media_type: str, digest: Digest, size: int
) -> dict[str, Any]:
    """The descriptor the referrers API lists for a manifest: its artifactType
    (or, for an image manifest without one, its config's media type) and its
    annotations."""
    out: dict[str, Any] = {"mediaType": media_type, "digest": str(digest), "size": size}
    artifact = doc.get("artifactType")
    if not isinstance(artifact, str):
        config = doc.get("config")
        artifact = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(artifact, str) and artifact:
        out["artifactType"] = artifact
    annotations = doc.get("annotations")
    if isinstance(annotations, dict) and annotations:
        out["annotations"] = {
            k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)
        }
    return out


def referrers_index(descriptors: Sequence[Mapping[str, Any]]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(descriptors)}
    return json.dumps(doc, separators=(",", ":")).encode()


# --- Basic auth and htpasswd ----------------------------------------------------------

_BCRYPT: Final = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """User and password of an `Authorization: Basic` header, or None."""
    if not header or len(header) > 4096:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


def parse_htpasswd(text: str, *, where: str) -> dict[str, bytes]:
    """`user:hash` lines as `htpasswd -B` writes them (bcrypt only: the other
    formats htpasswd knows are weak or unsalted). Blank lines and `#` comments
    are skipped; anything else names its line."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user:
            raise UsageError(f"{where}:{number}: expected USER:HASH")
        if not _BCRYPT.fullmatch(hashed):
            raise UsageError(
                f"{where}:{number}: the password of {user!r} is not a bcrypt hash",
                hint="write the file with `htpasswd -B` (bcrypt); MD5, SHA1 and crypt "
                "hashes are refused",
            )
        if user in users:
            raise UsageError(f"{where}:{number}: user {user!r} appears twice")
        users[user] = hashed.encode("ascii")
    if not users:
        raise UsageError(f"{where}: no users (expected USER:HASH lines from `htpasswd -B`)")
    return users
