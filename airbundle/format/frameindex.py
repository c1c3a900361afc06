"""The frame index of a bundle without a seek table, as kept in a cache folder.

A bundle written before the seek table has frames nobody listed: finding
them takes one sequential pass (the frames of its content region, and the
tar offset each one's output starts at). The result is kept in a small file
beside other cached data, named by the bundle's manifest digest, so the pass
runs once. The file is not signed and lives outside the bundle, so it is
read as untrusted input: size capped, strict JSON, every field's type and
range checked, and its frames must add up to the bundle it claims to index.
A wrong index cannot make wrong bytes pass (every member is still checked
against its signed sha256); it can only make reading fail.

    {"apiVersion": "airbundle/v1", "kind": "FrameIndex",
     "manifestDigest": "sha256:…", "totalLength": 42899, "contentOffset": 38988,
     "frames": [[3898, 16384], [13, 0]]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airbundle.errors import ArchiveError, FormatError
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.manifest import API_VERSION, MemberEntry
from airbundle.format.seektable import MIN_FRAME_SIZE, content_length
from airbundle.limits import Limits

KIND = "FrameIndex"
_KEYS = {"apiVersion", "kind", "manifestDigest", "totalLength", "contentOffset", "frames"}
_MAX_INT = (1 << 63) - 1


@dataclass(frozen=True)
class FrameIndex:
    manifest_digest: Digest
    total_length: int
    content_offset: int
    frames: tuple[tuple[int, int], ...]  # (compressed, decompressed) per content frame

    def to_bytes(self) -> bytes:
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "manifestDigest": str(self.manifest_digest),
            "totalLength": self.total_length,
            "contentOffset": self.content_offset,
            "frames": [list(f) for f in self.frames],
        }
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str, limits: Limits) -> FrameIndex:
        doc: Any = loads_strict(
            data,
            what=f"frame index {source}",
            max_bytes=limits.max_frame_index_bytes,
            max_depth=4,
            error=ArchiveError,
        )
        if not isinstance(doc, dict) or set(doc) != _KEYS:
            raise ArchiveError(f"frame index {source}: not a frame index (fields {_KEYS})")
        if doc["apiVersion"] != API_VERSION or doc["kind"] != KIND:
            raise ArchiveError(f"frame index {source}: not an {API_VERSION} {KIND}")
        try:
            digest = Digest.parse(_text(doc["manifestDigest"], source))
        except FormatError as exc:
            raise ArchiveError(f"frame index {source}: {exc.message}") from None
        frames = doc["frames"]
        if not isinstance(frames, list):
            raise ArchiveError(f"frame index {source}: frames must be a list")
        pairs = []
        for k, pair in enumerate(frames):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ArchiveError(f"frame index {source}: frames[{k}] is not a pair")
            size, length = _count(pair[0], source), _count(pair[1], source)
            if size < MIN_FRAME_SIZE:
                raise ArchiveError(f"frame index {source}: frames[{k}] is too small to be a frame")
            pairs.append((size, length))
        return cls(
            digest,
            _count(doc["totalLength"], source),
            _count(doc["contentOffset"], source),
            tuple(pairs),
        )

    def check(
        self,
        *,
        manifest_digest: Digest,
        total_length: int,
        content_offset: int,
        members: Sequence[MemberEntry],
        source: str,
    ) -> None:
        """Is this the index of that bundle? Raises ArchiveError if it cannot be."""
        if (self.manifest_digest, self.total_length, self.content_offset) != (
            manifest_digest,
            total_length,
            content_offset,
        ):
            raise ArchiveError(f"frame index {source} belongs to another bundle")
        if sum(c for c, _ in self.frames) != total_length - content_offset:
            raise ArchiveError(f"frame index {source}: its frames do not fill the content region")
        if sum(d for _, d in self.frames) < content_length(members):
            raise ArchiveError(f"frame index {source}: its frames hold less than the members")


def _count(value: Any, source: str) -> int:
    # bool is an int in Python; JSON true is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise ArchiveError(f"frame index {source}: {value!r} is not a byte count")
    return value


def _text(value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise ArchiveError(f"frame index {source}: {value!r} is not a string")
    return value
