"""A bundle's manifest read from its prefix alone, with no trust decision.

For display (inspect, diff, scan --bundle), for the export side (a --since
base, mirror-config) and for co-signing; never for import, which
authenticates first (ops/verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from airbundle.adapters.fsutil import open_regular
from airbundle.adapters.media import Media, open_media
from airbundle.errors import UsageError
from airbundle.format.archive import Prefix, read_prefix_region
from airbundle.format.manifest import BundleManifest
from airbundle.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class Unverified:
    media: Media
    prefix: Prefix
    manifest: BundleManifest
    size: int  # the bundle's length (a volume set's, from its index)


def read_unverified(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Unverified:
    """The manifest of the bundle (file or volume set) at `path`, parsed but
    not authenticated."""
    media, fh = open_first_volume(path, limits=limits)
    with fh:
        prefix, manifest = read_manifest(fh, source=media.description, limits=limits)
        size = media.index.total_length if media.index else fh.seek(0, 2)
    return Unverified(media, prefix, manifest, size)


def open_first_volume(
    path: Path, *, writable: bool = False, limits: Limits = DEFAULT_LIMITS
) -> tuple[Media, BinaryIO]:
    """The bundle file, or a set's first volume (which holds the prefix), open
    (for writing in place too, with `writable`). A regular file only: a FIFO or
    a device on the media must not hang or feed a command forever."""
    media = open_media(path, limits=limits)
    fh = open_regular(media.first, limit=None, what="bundle", error=UsageError, writable=writable)
    return media, fh


def read_manifest(
    fh: BinaryIO, *, source: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[Prefix, BundleManifest]:
    """The prefix region at the start of `fh`, and the manifest in it parsed."""
    prefix = read_prefix_region(fh, source=source, limits=limits)
    return prefix, BundleManifest.from_bytes(prefix.manifest, limits=limits)
