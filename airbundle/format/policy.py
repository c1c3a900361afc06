"""The image policy: containers-policy.json(5), as skopeo, podman and CRI-O read it.

Images are judged under the ``docker`` transport by their docker reference:
the scope that applies is the most specific entry of ``transports.docker``
(the reference itself, then its repository, each parent namespace, the host,
then ``*.domain`` wildcards), else ``transports.docker[""]``, else
``default`` (containers/image's ``requirementsForImageRef`` and
``DockerReferenceNamespaces``). Every requirement of that scope must hold.

Requirements understood: ``insecureAcceptAnything``, ``reject`` and
``sigstoreSigned`` with ``keyPath``/``keyPaths``/``keyData``/``keyDatas``
(PEM public keys; ``keyData`` is base64 of the PEM, as Go writes bytes) and
``signedIdentity`` (``matchRepoDigestOrExact`` when absent, ``matchExact``,
``matchRepository``, ``exactReference``, ``exactRepository``,
``remapIdentity``). Requirements airbundle cannot check offline (``signedBy``
with GPG keys, ``signedBaseLayer``, ``sigstoreSigned`` with ``fulcio``,
``pki`` or Rekor keys) are parsed and kept as :class:`Unsupported`: an image
whose scope holds one is an error when judged, never accepted in silence.
Other transports' sections are checked for syntax and not used.

Parsing is as strict as containers/image's: unknown or duplicated members,
empty requirement lists and unknown requirement types reject the whole file.

Pure: the file's bytes in (key files through the `read_key` callback), an
:class:`ImagePolicy` out; :func:`judge` decides on signatures the caller found.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airbundle.errors import FormatError, PolicyError, SignatureCheckError
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.reference import ImageReference
from airbundle.format.simplesigning import PublicKey, SignedClaims, verify

TRANSPORT = "docker"
_MAX_DEPTH = 16
_HOST = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)


# -- docker names that may lack a tag (signed identities often do) --------------


@dataclass(frozen=True)
class DockerName:
    """A normalized docker reference whose tag and digest are both optional:
    cosign signs ``registry/repo`` with neither (distribution's IsNameOnly)."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> DockerName | None:
        """Normalized like ParseNormalizedNamed; None if `text` is not a reference."""
        try:
            ref = ImageReference.parse(text)
        except FormatError:
            return None
        name_part = text.partition("@")[0]
        tagged = ":" in name_part.rsplit("/", 1)[-1]
        return cls(ref.name, ref.tag if tagged else None, str(ref.digest) if ref.digest else None)

    @classmethod
    def of(cls, ref: ImageReference) -> DockerName:
        """The identity the policy judges: a tag wins over a digest (containers/
        image never holds both; the digest is checked against the content)."""
        digest = str(ref.digest) if ref.digest and ref.tag is None else None
        return cls(ref.name, ref.tag, digest)

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    def policy_identity(self) -> str:
        """The scope key that names exactly this image (a tag wins over a digest)."""
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return f"{self.name}@{self.digest}" if self.digest else self.name

    def namespaces(self) -> list[str]:
        """Repository, parent namespaces, host, then `*.domain` wildcards."""
        out: list[str] = []
        name = self.name
        while True:
            out.append(name)
            if "/" not in name:
                break
            name = name.rsplit("/", 1)[0]
        host = name.split(":", 1)[0]
        while "." in host:
            host = host.split(".", 1)[1]
            out.append(f"*.{host}")
        return out


# -- signedIdentity ---------------------------------------------------------------

_IDENTITY_MEMBERS = {
    "matchExact": set(),
    "matchRepoDigestOrExact": set(),
    "matchRepository": set(),
    "exactReference": {"dockerReference"},
    "exactRepository": {"dockerRepository"},
    "remapIdentity": {"prefix", "signedPrefix"},
}


@dataclass(frozen=True)
class SignedIdentity:
    type: str = "matchRepoDigestOrExact"
    reference: DockerName | None = None  # exactReference, exactRepository
    prefix: str = ""  # remapIdentity
    signed_prefix: str = ""

    def describe(self) -> str:
        if self.type in ("exactReference", "exactRepository"):
            return f"{self.type} {self.reference}"
        if self.type == "remapIdentity":
            return f"remapIdentity {self.prefix} -> {self.signed_prefix}"
        return self.type

    def matches(self, image: DockerName, signed_text: str) -> bool:
        """Whether a signature claiming `signed_text` is accepted for `image`
        (containers/image's policy_reference_match.go)."""
        signed = DockerName.parse(signed_text)
        if signed is None:
            return False
        if self.type == "matchExact":
            return not image.name_only and not signed.name_only and str(signed) == str(image)
        if self.type == "matchRepoDigestOrExact":
            return _repo_digest_or_exact(image, signed)
        if self.type == "matchRepository":
            return signed.name == image.name
        if self.type == "exactReference":
            assert self.reference is not None
            return not signed.name_only and str(signed) == str(self.reference)
        if self.type == "exactRepository":
            assert self.reference is not None
            return signed.name == self.reference.name
        remapped = self._remap(image)
        return remapped is not None and _repo_digest_or_exact(remapped, signed)

    def _remap(self, image: DockerName) -> DockerName | None:
        name = image.name
        if not (name == self.prefix or name.startswith(self.prefix + "/")):
            return image
        text = str(image).replace(self.prefix, self.signed_prefix, 1)
        remapped = DockerName.parse(text)
        # ParseNamed: the rewritten reference must already be in canonical form.
        return remapped if remapped is not None and str(remapped) == text else None


def _repo_digest_or_exact(image: DockerName, signed: DockerName) -> bool:
    if signed.name_only:
        return False
    if image.tag is not None:
        return str(signed) == str(image)
    if image.digest is not None:
        # The digest itself is checked against the signed manifest digest.
        return signed.name == image.name
    return False


# -- requirements -----------------------------------------------------------------


@dataclass(frozen=True)
class InsecureAcceptAnything:
    type: str = "insecureAcceptAnything"


@dataclass(frozen=True)
class Reject:
    type: str = "reject"


@dataclass(frozen=True)
class SigstoreSigned:
    keys: tuple[PublicKey, ...]
    identity: SignedIdentity = field(default_factory=SignedIdentity)
    type: str = "sigstoreSigned"


@dataclass(frozen=True)
class Unsupported:
    """A requirement airbundle cannot check: judging an image under it is an error."""

    type: str
    reason: str


Requirement = InsecureAcceptAnything | Reject | SigstoreSigned | Unsupported


@dataclass(frozen=True)
class Scope:
    """The policy entry that applies to an image, and its requirements."""

    transport: str | None  # None: the global default
    name: str
    requirements: tuple[Requirement, ...]

    def describe(self) -> str:
        if self.transport is None:
            return "default"
        return f'transports.{self.transport}["{self.name}"]'


@dataclass(frozen=True)
class ImagePolicy:
    default: tuple[Requirement, ...]
    docker: Mapping[str, tuple[Requirement, ...]]
    digest: Digest  # of the file's bytes, recorded with the evidence
    source: str = "policy"

    def scope_for(self, image: DockerName) -> Scope:
        for name in (image.policy_identity(), *image.namespaces()):
            requirements = self.docker.get(name)
            if requirements is not None:
                return Scope(TRANSPORT, name, requirements)
        if "" in self.docker:
            return Scope(TRANSPORT, "", self.docker[""])
        return Scope(None, "default", self.default)


KeyReader = Callable[[str], bytes]


def parse_policy(data: bytes, *, where: str, read_key: KeyReader, max_bytes: int) -> ImagePolicy:
    """A containers-policy.json document, every sigstore key loaded."""
    doc = loads_strict(
        data, what=where, max_bytes=max_bytes, max_depth=_MAX_DEPTH, error=PolicyError
    )
    parser = _Parser(where, read_key)
    top = parser.members(doc, {"default", "transports"}, where="(top level)", required={"default"})
    default = parser.requirements(top["default"], "default")
    docker: dict[str, tuple[Requirement, ...]] = {}
    transports = parser.members(top.get("transports", {}), None, where="transports")
    for transport, scopes in transports.items():
        for scope, value in parser.members(scopes, None, where=f"transports.{transport}").items():
            requirements = parser.requirements(value, f'transports.{transport}["{scope}"]')
            if transport == TRANSPORT:
                docker[scope] = requirements
    return ImagePolicy(default, docker, Digest.sha256_of(data), where)


class _Parser:
    def __init__(self, source: str, read_key: KeyReader) -> None:
        self.source = source
        self.read_key = read_key
        self._keys: dict[str, PublicKey] = {}

    def fail(self, where: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: {where}: {problem}")

    def members(
        self,
        value: Any,
        allowed: set[str] | None,
        *,
        where: str,
        required: frozenset[str] | set[str] = frozenset(),
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a JSON object")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(where, f"unknown member {unknown[0]!r}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(where, f"member {missing[0]!r} is required")
        return value

    def requirements(self, value: Any, where: str) -> tuple[Requirement, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, "must be a non-empty list of requirements")
        return tuple(self.requirement(item, f"{where}[{i}]") for i, item in enumerate(value))

    def requirement(self, value: Any, where: str) -> Requirement:
        kind = self.members(value, None, where=where, required={"type"})["type"]
        if kind in ("insecureAcceptAnything", "reject"):
            self.members(value, {"type"}, where=where)
            return InsecureAcceptAnything() if kind == "insecureAcceptAnything" else Reject()
        if kind == "signedBy":
            return Unsupported(
                kind,
                "signedBy (GPG simple signing) is not verified by airbundle; "
                "use sigstoreSigned, or check with skopeo before export",
            )
        if kind == "signedBaseLayer":
            return Unsupported(kind, "signedBaseLayer is not checked by airbundle")
        if kind == "sigstoreSigned":
            return self.sigstore(value, where)
        raise self.fail(where, f"unknown requirement type {kind!r}")

    def sigstore(self, value: dict[str, Any], where: str) -> Requirement:
        key_sources = ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
        rekor = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                 "rekorPublicKeyDatas")  # fmt: skip
        self.members(value, {"type", "signedIdentity", *key_sources, *rekor}, where=where)
        given = [k for k in key_sources if k in value]
        if len(given) != 1:
            raise self.fail(
                where, "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio and pki "
                "must be specified"
            )  # fmt: skip
        if sum(k in value for k in rekor) > 1:
            raise self.fail(where, f"at most one of {', '.join(rekor)} may be specified")
        if given[0] == "fulcio" and not any(k in value for k in rekor):
            raise self.fail(where, "fulcio needs a Rekor public key (rekorPublicKey...)")
        identity = self.identity(value.get("signedIdentity"), f"{where}.signedIdentity")
        if given[0] in ("fulcio", "pki"):
            return Unsupported(
                "sigstoreSigned",
                f"sigstoreSigned with {given[0]} (certificate-based, keyless) signatures is not "
                "verified by airbundle: it has no offline Fulcio/Rekor trust root; use keyPath "
                "or keyData",
            )
        if any(k in value for k in rekor):
            return Unsupported(
                "sigstoreSigned",
                "sigstoreSigned with a Rekor public key needs transparency-log proofs, which "
                "airbundle does not verify; drop rekorPublicKey... or check with skopeo",
            )
        keys = self.keys(given[0], value[given[0]], f"{where}.{given[0]}")
        return SigstoreSigned(keys, identity)

    def keys(self, kind: str, value: Any, where: str) -> tuple[PublicKey, ...]:
        many = kind.endswith("s")
        items = value if many else [value]
        if many and (not isinstance(value, list) or not value):
            raise self.fail(where, "must be a non-empty list")
        keys = []
        for i, item in enumerate(items):
            at = f"{where}[{i}]" if many else where
            if not isinstance(item, str) or not item:
                raise self.fail(at, "must be a non-empty string")
            keys.append(self.key(kind, item, at))
        return tuple(keys)

    def key(self, kind: str, item: str, where: str) -> PublicKey:
        if kind.startswith("keyPath"):
            cached = self._keys.get(item)
            if cached is None:
                cached = PublicKey.from_pem(self.read_key(item), where=f"{self.source}: key {item}")
                self._keys[item] = cached
            return cached
        try:
            pem = base64.b64decode(item.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise self.fail(
                where, "is not base64 (keyData holds the PEM key, base64-encoded)"
            ) from None
        return PublicKey.from_pem(pem, where=f"{self.source}: {where}")

    def identity(self, value: Any, where: str) -> SignedIdentity:
        if value is None:
            return SignedIdentity()
        kind = self.members(value, None, where=where, required={"type"})["type"]
        if kind not in _IDENTITY_MEMBERS:
            raise self.fail(where, f"unknown signedIdentity type {kind!r}")
        self.members(value, {"type", *_IDENTITY_MEMBERS[kind]}, where=where,
                     required={"type", *_IDENTITY_MEMBERS[kind]})  # fmt: skip
        if kind == "exactReference":
            ref = DockerName.parse(str(value["dockerReference"]))
            if ref is None or ref.name_only:
                raise self.fail(where, "dockerReference must be a reference with a tag or digest")
            return SignedIdentity(kind, ref)
        if kind == "exactRepository":
            ref = DockerName.parse(str(value["dockerRepository"]))
            if ref is None:
                raise self.fail(where, "dockerRepository is not a repository")
            return SignedIdentity(kind, ref)
        if kind == "remapIdentity":
            prefix = self.prefix(value["prefix"], f"{where}.prefix")
            signed = self.prefix(value["signedPrefix"], f"{where}.signedPrefix")
            return SignedIdentity(kind, prefix=prefix, signed_prefix=signed)
        return SignedIdentity(kind)

    def prefix(self, value: Any, where: str) -> str:
        """host[:port], a namespace or a repository, fully expanded, no tag or digest."""
        if isinstance(value, str):
            if _HOST.fullmatch(value) and "/" not in value:
                return value
            parsed = DockerName.parse(value)
            if parsed is not None and parsed.name_only and parsed.name == value:
                return value
        raise self.fail(
            where, f"{value!r} is not host[:port] or a fully expanded namespace or repository"
        )


# -- judging one image ------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A signature found for an image, not yet trusted."""

    payload: bytes
    signature: str  # base64, as found in the annotation
    where: str  # the tag or referrer it came from


@dataclass(frozen=True)
class Checked:
    """A found signature after its cryptographic check under one scope."""

    found: Found
    key: PublicKey | None = None
    claims: SignedClaims | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Verdict:
    scope: Scope
    accepted: bool
    reasons: tuple[str, ...]
    checked: tuple[Checked, ...]  # every signature, verified (key set) or not

    @property
    def verified(self) -> tuple[Checked, ...]:
        return tuple(c for c in self.checked if c.key is not None)


def judge(
    policy: ImagePolicy,
    image: DockerName,
    digests: frozenset[Digest],
    found: Sequence[Found],
    *,
    what: str,
) -> Verdict:
    """Whether the image is accepted: every requirement of its scope must hold.
    `digests` are the manifest digests a signature may cover (the image's own);
    `found` the signatures found for it, none trusted yet."""
    scope = policy.scope_for(image)
    for requirement in scope.requirements:
        if isinstance(requirement, Unsupported):
            raise PolicyError(
                f"{what}: the policy scope {scope.describe()} ({policy.source}) requires "
                f"{requirement.type}: {requirement.reason}"
            )
    keys = [k for r in scope.requirements if isinstance(r, SigstoreSigned) for k in r.keys]
    checked = tuple(_check(f, keys) for f in found)
    reasons: list[str] = []
    for requirement in scope.requirements:
        if isinstance(requirement, Reject):
            reasons.append("the scope rejects every image (reject)")
        elif isinstance(requirement, SigstoreSigned):
            reason = _sigstore(requirement, image, digests, found)
            if reason is not None:
                reasons.append(reason)
    return Verdict(scope, not reasons, tuple(reasons), checked)


def _check(found: Found, keys: list[PublicKey]) -> Checked:
    problem = "not signed by a key of the policy" if keys else None
    for key in keys:
        try:
            return Checked(found, key, verify(found.payload, found.signature, key))
        except SignatureCheckError as exc:
            problem = exc.message
    return Checked(found, problem=problem)


def _sigstore(
    requirement: SigstoreSigned,
    image: DockerName,
    digests: frozenset[Digest],
    found: Sequence[Found],
) -> str | None:
    """None if one signature satisfies the requirement, else why none does."""
    if not found:
        return "a sigstore signature was required, but no signature exists"
    reasons = []
    for candidate in found:
        reason = _one(requirement, image, digests, candidate)
        if reason is None:
            return None
        reasons.append(f"{candidate.where}: {reason}")
    return "no signature is accepted: " + "; ".join(dict.fromkeys(reasons))


def _one(
    requirement: SigstoreSigned, image: DockerName, digests: frozenset[Digest], found: Found
) -> str | None:
    problems = []
    for key in requirement.keys:
        try:
            claims = verify(found.payload, found.signature, key)
        except SignatureCheckError as exc:
            problems.append(exc.message)
            continue
        if claims.digest not in digests:
            return f"the signature is for digest {claims.digest}, not this image's"
        if not requirement.identity.matches(image, claims.docker_reference):
            return (
                f"signed identity {claims.docker_reference!r} is not accepted for {image} "
                f"(signedIdentity {requirement.identity.describe()})"
            )
        return None
    if len(requirement.keys) == 1:
        return problems[0]
    return "not signed by any of the keys " + ", ".join(k.fingerprint for k in requirement.keys)
