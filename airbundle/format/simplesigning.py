"""Sigstore (cosign) image signatures: public keys, the simple-signing payload,
and the check of one signature against one key.

The layout follows sigstore/cosign ``specs/SIGNATURE_SPEC.md`` and
containers-signature(5): a signature is a layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` whose bytes are the
payload, with the base64 signature of those bytes in the layer's annotation
``dev.cosignproject.cosign/signature``. The payload is::

    {"critical": {"identity": {"docker-reference": REF},
                  "image": {"docker-manifest-digest": DIGEST},
                  "type": "cosign container image signature"},
     "optional": {...} or null}

As containers-signature(5) requires, the payload is parsed only after the
signature over its exact bytes verified, and then strictly: the top level and
``critical`` (with its sub-objects) must hold exactly the members above, and
nothing may be duplicated; ``optional`` may hold anything (``creator`` a
string and ``timestamp`` an integer if present).

Signature schemes, as sigstore's ``LoadVerifier(key, SHA256)`` applies them:
ECDSA (P-256, P-384, P-521) over SHA-256, DER-encoded; RSA PKCS#1 v1.5 with
SHA-256 (2048 bits or more); Ed25519 over the payload itself.

Pure: bytes in, values out, or a SignatureCheckError (a signature that does
not hold) or PolicyError (a key airbundle cannot use).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from airbundle.errors import FormatError, PolicyError, SignatureCheckError
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
# cosign's artifact type when it stores a signature through the referrers API.
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"

_CURVES = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}
_MIN_RSA_BITS = 2048
# A payload is a few hundred bytes; optional claims are user data, still small.
_MAX_PAYLOAD_DEPTH = 16


VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class PublicKey:
    """A sigstore public key: what it is, and its fingerprint (SHA-256 of the
    DER SubjectPublicKeyInfo, which ``openssl pkey -pubin -outform DER |
    sha256sum`` reproduces)."""

    key: VerifyingKey
    kind: str  # ecdsa-p256, ecdsa-p384, ecdsa-p521, rsa-NNNN, ed25519
    fingerprint: str  # sha256:HEX

    @classmethod
    def from_pem(cls, data: bytes, *, where: str) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PolicyError(
                f"{where}: not a PEM public key (-----BEGIN PUBLIC KEY-----): {exc}"
            ) from None
        if isinstance(key, ec.EllipticCurvePublicKey):
            kind = _CURVES.get(key.curve.name)
            if kind is None:
                raise PolicyError(f"{where}: ECDSA curve {key.curve.name} is not supported")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < _MIN_RSA_BITS:
                raise PolicyError(
                    f"{where}: RSA key of {key.key_size} bits; at least {_MIN_RSA_BITS} needed"
                )
            kind = f"rsa-{key.key_size}"
        elif isinstance(key, ed25519.Ed25519PublicKey):
            kind = "ed25519"
        else:
            raise PolicyError(
                f"{where}: {type(key).__name__} keys are not supported "
                "(ECDSA P-256/P-384/P-521, RSA, Ed25519 are)"
            )
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(key, kind, "sha256:" + hashlib.sha256(der).hexdigest())

    def verify(self, signature: bytes, payload: bytes) -> None:
        """Raise SignatureCheckError unless `signature` is this key's over `payload`."""
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                self.key.verify(signature, payload)
        except InvalidSignature:
            raise SignatureCheckError(
                f"the signature does not verify with key {self.fingerprint} ({self.kind})"
            ) from None


@dataclass(frozen=True)
class SignedClaims:
    """What a verified payload says: the image digest and the identity."""

    digest: Digest
    docker_reference: str
    creator: str | None = None
    timestamp: int | None = None


def decode_signature(text: str) -> bytes:
    """The annotation's base64 (standard alphabet, padded), strictly."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SignatureCheckError("the signature annotation is not valid base64") from None


def verify(payload: bytes, signature_b64: str, key: PublicKey) -> SignedClaims:
    """The claims of `payload`, if `signature_b64` is `key`'s signature over its
    exact bytes; the payload is not looked at before that."""
    key.verify(decode_signature(signature_b64), payload)
    return parse_payload(payload)


def parse_payload(payload: bytes) -> SignedClaims:
    """Strict parse of a simple-signing payload (call only once authenticated)."""
    try:
        doc = loads_strict(
            payload,
            what="signature payload",
            max_bytes=len(payload),
            max_depth=_MAX_PAYLOAD_DEPTH,
            error=SignatureCheckError,
        )
    except SignatureCheckError as exc:
        raise SignatureCheckError(exc.message) from None
    top = _exact(doc, {"critical", "optional"}, "the payload")
    critical = _exact(top["critical"], {"type", "image", "identity"}, "critical")
    if critical["type"] != SIGNATURE_TYPE:
        raise SignatureCheckError(f"critical.type is {critical['type']!r}, not {SIGNATURE_TYPE!r}")
    image = _exact(critical["image"], {"docker-manifest-digest"}, "critical.image")
    identity = _exact(critical["identity"], {"docker-reference"}, "critical.identity")
    digest_text, reference = image["docker-manifest-digest"], identity["docker-reference"]
    if not isinstance(digest_text, str) or not isinstance(reference, str) or not reference:
        raise SignatureCheckError("critical.image or critical.identity holds a non-string value")
    try:
        digest = Digest.parse(digest_text)
    except FormatError as exc:
        raise SignatureCheckError(f"critical.image.docker-manifest-digest: {exc.message}") from None
    creator, timestamp = _optional(top["optional"])
    return SignedClaims(digest, reference, creator, timestamp)


def _exact(value: Any, members: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureCheckError(f"{where} is not a JSON object")
    if set(value) != members:
        extra = sorted(set(value) - members)
        missing = sorted(members - set(value))
        what = f"unexpected member {extra[0]!r}" if extra else f"missing member {missing[0]!r}"
        raise SignatureCheckError(f"{where}: {what}")
    return value


def _optional(value: Any) -> tuple[str | None, int | None]:
    # cosign writes "optional": null when there are no annotations.
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise SignatureCheckError("optional is neither null nor a JSON object")
    creator = value.get("creator")
    if creator is not None and not isinstance(creator, str):
        raise SignatureCheckError("optional.creator is not a string")
    timestamp = value.get("timestamp")
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise SignatureCheckError("optional.timestamp is not a number")
        if int(timestamp) != timestamp:
            raise SignatureCheckError("optional.timestamp is not an integer")
        timestamp = int(timestamp)
    return creator, timestamp
