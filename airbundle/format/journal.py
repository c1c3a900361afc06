"""The sign journal: what `airbundle sign` saves before it rewrites a bundle's
prefix region in place, so that a crash mid-write can be undone.

A journal lies beside the bundle, on the same media as the bundle, where anyone
who can change the media can write one. So a journal is trusted for nothing it
does not prove (docs/security.md, section 5.2):

* it is signed (SSHSIG, namespace ``airbundle-sign-journal``, so it can never
  pass for a bundle signature) by the key of the `sign` run that wrote it, and
  only the same key may use it: a journal cannot make a signer write bytes that
  signer did not write first;
* it holds both the region it replaced (``old``) and the one being written
  (``new``), which must carry the same manifest bytes, ``new`` holding exactly
  one signature more: recovery can never change the manifest;
* it names the bundle file it belongs to: the 40-byte header, the file's
  length, and a digest of the first bytes of the content region. Recovery
  writes only the prefix region, never the content;
* the bundle's current region must be what an interrupted write leaves: the old
  region, the new one, or a mix of the two byte by byte.

This module encodes and decodes journals; reading and writing files is
ops/sign.py's job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.errors import SignatureError
from airbundle.format import schemas, sshsig
from airbundle.format.jsonutil import loads_strict

NAMESPACE = "airbundle-sign-journal"
MAGIC = b"airbundle sign journal 1\n"
# Bytes of the content region a journal hashes to name its bundle (not a limit:
# less if the file is shorter).
CONTENT_PROBE = 1 << 20
_MAX_HEADER = 64 * 1024
_BLOCK = 4096


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Binding:
    """Which bundle file, in which state, a journal belongs to."""

    file_name: str
    file_size: int
    header: str  # sha256 of the 40-byte file header
    prefix_length: int
    content_head: str  # sha256 of the first bytes of the content region
    content_head_length: int


@dataclass(frozen=True)
class Journal:
    binding: Binding
    manifest: str  # sha256 of the manifest both regions hold
    old: bytes  # the prefix region as it was before the rewrite
    new: bytes  # the prefix region being written
    signer: sshsig.PublicKey


def encode(
    binding: Binding, manifest: bytes, old: bytes, new: bytes, key: Ed25519PrivateKey
) -> bytes:
    if len(old) != binding.prefix_length or len(new) != binding.prefix_length:
        raise ValueError("journal regions must have the prefix length")
    header = {
        "bundle": binding.file_name,
        "fileSize": binding.file_size,
        "header": binding.header,
        "prefixLength": binding.prefix_length,
        "contentHead": binding.content_head,
        "contentHeadLength": binding.content_head_length,
        "manifest": sha256_hex(manifest),
        "old": sha256_hex(old),
        "new": sha256_hex(new),
        "signer": sshsig.public_key_of(key).fingerprint,
    }
    body = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + old + new
    return body + sshsig.sign(body, key, namespace=NAMESPACE)


def decode(data: bytes, *, source: str, max_signature_bytes: int) -> Journal:
    """Parse a journal and check its own signature; raise SignatureError."""
    if not data.startswith(MAGIC):
        raise SignatureError(f"{source} is not an airbundle sign journal")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise SignatureError(f"{source}: the journal header is missing or too long")
    doc: Any = loads_strict(
        data[len(MAGIC) : end],
        what=f"{source}: journal header",
        max_bytes=_MAX_HEADER,
        max_depth=2,
        error=SignatureError,
    )
    schemas.check(schemas.SIGN_JOURNAL, doc, what=source, error=SignatureError)
    length = doc["prefixLength"]
    start = end + 1
    body_end = start + 2 * length
    armored = data[body_end:]
    if body_end > len(data) or not armored or len(armored) > max_signature_bytes:
        raise SignatureError(f"{source}: the journal is cut short or malformed")
    # Its own signature first: nothing below is believed before it checks.
    signer = sshsig.verify(data[:body_end], armored, namespace=NAMESPACE)
    old, new = data[start : start + length], data[start + length : body_end]
    if sha256_hex(old) != doc["old"] or sha256_hex(new) != doc["new"]:
        raise SignatureError(f"{source}: the journal's regions do not match its header")
    binding = Binding(
        doc["bundle"],
        doc["fileSize"],
        doc["header"],
        length,
        doc["contentHead"],
        doc["contentHeadLength"],
    )
    return Journal(binding, doc["manifest"], old, new, signer)


def torn_between(current: bytes, old: bytes, new: bytes) -> bool:
    """True if every byte of `current` is the old one or the new one at its
    place: what a write of `new` over `old` cut short can leave."""
    if not len(current) == len(old) == len(new):
        return False
    for start in range(0, len(current), _BLOCK):
        now = current[start : start + _BLOCK]
        was, then = old[start : start + _BLOCK], new[start : start + _BLOCK]
        if now in (was, then):
            continue
        if any(c not in (a, b) for c, a, b in zip(now, was, then, strict=True)):
            return False
    return True
