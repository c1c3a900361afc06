"""Content digests (``sha256:<hex>``) as used by OCI layouts and registries.

A digest read from a bundle, a manifest or a registry is attacker-controlled,
and it becomes a path (``blobs/sha256/<hex>``) as soon as it is stored. So the
accepted language is deliberately narrower than the OCI grammar: only the two
registered algorithms, only their exact lengths, only lowercase hex. Every
:class:`Digest` that exists has passed that check, whichever way it was built.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from airbundle.errors import InvalidDigestError

if TYPE_CHECKING:
    # typeshed's name for hashlib objects; it does not exist at run time.
    from hashlib import _Hash

_HEX_LENGTHS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}

_HASHERS: Final[dict[str, Callable[[], _Hash]]] = {
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}

# Spelled out rather than [[:xdigit:]] or \d: both of those admit more than
# lowercase ASCII, and uppercase hex would give one blob two names.
_LOWER_HEX: Final = re.compile(r"[0-9a-f]+")

_QUOTE_LIMIT: Final = 80


def _quote(value: str) -> str:
    # repr() escapes newlines and control characters, so a hostile value
    # cannot forge extra lines in a log or terminal.
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + "..."
    return repr(value)


def _problem(algorithm: str, hex_part: str) -> str | None:
    """Why ``algorithm:hex_part`` is not an accepted digest, or None if it is."""
    expected = _HEX_LENGTHS.get(algorithm)
    if expected is None:
        supported = ", ".join(_HEX_LENGTHS)
        return f"unsupported algorithm {_quote(algorithm)} (supported: {supported})"
    # fullmatch, not match with "$": "$" also matches before a trailing
    # newline, which would let "sha256:<hex>\n" through.
    if not _LOWER_HEX.fullmatch(hex_part):
        if _LOWER_HEX.fullmatch(hex_part.lower()):
            return "hex must be lowercase"
        return "encoded part must be hex characters 0-9a-f"
    if len(hex_part) != expected:
        return f"a {algorithm} digest has {expected} hex characters, not {len(hex_part)}"
    return None


@dataclass(frozen=True, order=True)
class Digest:
    """A validated ``sha256`` or ``sha512`` digest."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        # Direct construction gets the same check as parse(), so that
        # blob_path can never be built from an unchecked value.
        problem = _problem(self.algorithm, self.hex)
        if problem is not None:
            raise InvalidDigestError(
                f"invalid digest {_quote(f'{self.algorithm}:{self.hex}')}: {problem}"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<64 hex>`` or ``sha512:<128 hex>``; nothing else."""
        algorithm, sep, hex_part = text.partition(":")
        if not sep:
            raise InvalidDigestError(
                f"invalid digest {_quote(text)}: expected '<algorithm>:<hex>', "
                "for example 'sha256:' followed by 64 lowercase hex characters"
            )
        problem = _problem(algorithm, hex_part)
        if problem is not None:
            raise InvalidDigestError(f"invalid digest {_quote(text)}: {problem}")
        return cls(algorithm, hex_part)

    @classmethod
    def sha256_of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: _Hash) -> Digest:
        """The digest of everything fed so far to a hashlib sha256/sha512 object."""
        if hasher.name not in _HEX_LENGTHS:
            supported = ", ".join(_HEX_LENGTHS)
            raise InvalidDigestError(
                f"unsupported digest algorithm {_quote(hasher.name)} (supported: {supported})"
            )
        return cls(hasher.name, hasher.hexdigest())

    def new_hasher(self) -> _Hash:
        """A fresh hashlib object for this digest's algorithm."""
        return _HASHERS[self.algorithm]()

    @property
    def blob_path(self) -> str:
        """Relative path of the blob inside an OCI image layout."""
        return f"blobs/{self.algorithm}/{self.hex}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
