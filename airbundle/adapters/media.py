"""Bundles on media: one file, or a set of volumes read in place.

Writing: VolumeWriter is the file object BundleWriter writes into; it cuts the
stream into volumes and hashes each on the way (no second pass). Reading:
open_media finds the set a path belongs to, checks every volume is present
and whole before anything else happens, and ConcatReader streams across
volume boundaries (no reassembly copy), checking each volume's hash as it
passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from airbundle.adapters.fsutil import (
    TEMP_MARK,
    fsync_dir,
    open_regular,
    read_optional,
    read_regular,
)
from airbundle.errors import (
    AirbundleError,
    ArchiveError,
    ManifestError,
    SignatureError,
    TruncatedError,
    UsageError,
)
from airbundle.format import erasure
from airbundle.format.digest import Digest
from airbundle.format.volumes import (
    INDEX_SUFFIX,
    SIGNATURE_SUFFIX,
    VolumeEntry,
    VolumeIndex,
    parity_count,
    volume_name,
)
from airbundle.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from airbundle.adapters.parity import RepairingVolumes

# adapters.parity (the erasure-code kernel, threads, mmap) is imported where a
# set has or gets parity volumes: most bundles have none, and verify of one
# pays ~20 ms less at start-up.

_ARMOR_START = b"-----BEGIN SSH SIGNATURE-----"
MAX_INDEX_SIGNATURES = DEFAULT_LIMITS.max_volume_index_signatures


class VolumeWriter:
    """A write/seek/tell file object over NAME.001, NAME.002, ... (temporary
    names until `commit`). Only the first volume's start may be rewritten
    (the bundle's reserved prefix), and that range is not hashed."""

    def __init__(
        self,
        folder: Path,
        base: str,
        volume_size: int,
        *,
        unhashed: int,
        parity: int | float | None = None,
    ) -> None:
        if volume_size <= unhashed:
            raise UsageError(
                f"volume size {volume_size} is too small: the first volume must hold the "
                f"bundle's header and signed prefix ({unhashed} bytes) and some content"
            )
        self.folder = folder
        self.base = base
        self.volume_size = volume_size
        self.unhashed = unhashed
        # Parity volumes to write at commit: a count, or a fraction of the data volumes.
        self.parity = parity
        self._files: list[BinaryIO] = []
        self._temps: list[Path] = []
        self._hashes: list[hashlib._Hash] = []
        self._sizes: list[int] = []
        self._pos = 0  # global write position
        self._end = 0  # global end of data
        self._committed = False

    def _open_next(self) -> None:
        number = len(self._files) + 1
        if self.parity is not None and number + parity_count(self.parity, number) > (
            erasure.MAX_SHARDS
        ):
            raise UsageError(
                f"volume {number} with {parity_count(self.parity, number)} parity volumes: "
                f"parity covers at most {erasure.MAX_SHARDS} volumes in all",
                hint="use larger volumes (--split-size) or fewer parity volumes",
            )
        path = self.folder / f"{TEMP_MARK}{self.base}.{number:03d}.part"
        self._files.append(path.open("w+b"))
        self._temps.append(path)
        self._hashes.append(hashlib.sha256())
        self._sizes.append(0)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("VolumeWriter seeks only to absolute positions")
        if pos != self._end and pos >= self.unhashed:
            raise OSError("only the reserved prefix of a volume set can be rewritten")
        self._pos = pos
        return pos

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if self._pos < self._end:
            # Rewriting the reserved prefix in the first volume (not hashed).
            if self._pos + len(view) > self.unhashed:
                raise OSError("prefix rewrite would run past the reserved region")
            fh = self._files[0]
            fh.seek(self._pos)
            fh.write(view)
            fh.seek(0, os.SEEK_END)
            self._pos += len(view)
            return len(view)
        written = 0
        while written < len(view):
            if not self._files or self._sizes[-1] >= self.volume_size:
                self._open_next()
            room = self.volume_size - self._sizes[-1]
            part = view[written : written + room]
            self._files[-1].write(part)
            start_in_volume = self._sizes[-1]
            if len(self._files) > 1:
                self._hashes[-1].update(part)
            elif start_in_volume + len(part) > self.unhashed:
                skip = max(0, self.unhashed - start_in_volume)
                self._hashes[-1].update(part[skip:])
            self._sizes[-1] += len(part)
            written += len(part)
        self._pos += written
        self._end = self._pos
        return written

    def flush(self) -> None:
        for fh in self._files:
            fh.flush()

    def commit(self) -> VolumeIndex:
        """fsync every volume, write the parity volumes (a second pass over the
        finished data volumes, in stripes), rename them all to their final
        names; return the index."""
        entries = []
        for number, fh in enumerate(self._files, 1):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            name = volume_name(self.base, number)
            entries.append(
                VolumeEntry(
                    name,
                    self._sizes[number - 1],
                    self.unhashed if number == 1 else 0,
                    Digest("sha256", self._hashes[number - 1].hexdigest()),
                )
            )
        index = VolumeIndex(self.base, self._end, tuple(entries))
        renames = [(t, self.folder / e.name) for t, e in zip(self._temps, entries, strict=True)]
        if self.parity is not None:
            from airbundle.adapters.parity import encode_parity

            info, temps = encode_parity(
                self.folder, index, self._temps, parity_count(self.parity, len(entries))
            )
            self._temps += temps
            index = VolumeIndex(self.base, self._end, index.volumes, info)
            renames += [(t, self.folder / v.name) for t, v in zip(temps, info.volumes, strict=True)]
        for temp, final in renames:
            temp.replace(final)
        fsync_dir(self.folder)
        self._committed = True
        return index

    def abort(self) -> None:
        for fh in self._files:
            with contextlib.suppress(OSError):
                fh.close()
        if not self._committed:
            # (parity temporaries too: commit appends them before renaming)
            for temp in self._temps:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()


def split_signatures(data: bytes) -> list[bytes]:
    """The armored SSHSIG blocks of a .volumes.sig file, in order."""
    parts = [_ARMOR_START + p for p in data.split(_ARMOR_START)[1:]]
    if len(parts) > MAX_INDEX_SIGNATURES:
        raise ArchiveError(f"more than {MAX_INDEX_SIGNATURES} signatures on a volume index")
    return parts


@dataclass
class Media:
    """A bundle as found on media: a single file, or a volume set."""

    description: str
    single: Path | None = None
    index: VolumeIndex | None = None
    index_path: Path | None = None
    index_bytes: bytes = b""
    index_signatures: list[bytes] = field(default_factory=list)
    folder: Path | None = None
    # A set with parity: where rebuilt volumes may be kept (None: rebuilt on
    # the fly, nothing written beside read-only media).
    scratch: Path | None = None
    _repairing: RepairingVolumes | None = None

    @property
    def repairing(self) -> RepairingVolumes | None:
        """For a set with parity volumes: its data volumes, whole or rebuilt."""
        if self.index is None or self.index.parity is None:
            return None
        if self._repairing is None:
            from airbundle.adapters.parity import RepairingVolumes

            assert self.folder is not None
            self._repairing = RepairingVolumes(
                self.folder, self.index, self.description, scratch=self.scratch
            )
        return self._repairing

    def rebuilt(self) -> dict[str, str]:
        """Volumes rebuilt from parity so far: name -> what was wrong with it."""
        return dict(self._repairing.rebuilt) if self._repairing is not None else {}

    @property
    def first(self) -> Path:
        if self.single is not None:
            return self.single
        assert self.index is not None and self.folder is not None
        return self.folder / self.index.volumes[0].name

    def volume_paths(self) -> list[Path]:
        assert self.index is not None and self.folder is not None
        return [self.folder / v.name for v in self.index.volumes]

    def check_present(self) -> None:
        """Every volume there with its size: refused before anything is written."""
        if self.index is None:
            return
        if self.repairing is not None:
            # Up to as many volumes as there are parity volumes may be lost:
            # they are rebuilt when read (more are refused here).
            self.repairing.survey()
            return
        problems = []
        for entry, path in zip(self.index.volumes, self.volume_paths(), strict=True):
            try:
                st = path.stat()
            except FileNotFoundError:
                problems.append(f"volume {entry.name} is missing")
                continue
            size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"volume {entry.name} is not a regular file")
            elif size < entry.size:
                problems.append(f"volume {entry.name} is truncated ({size} of {entry.size} bytes)")
            elif size > entry.size:
                problems.append(f"volume {entry.name} is {size - entry.size} bytes too long")
        if problems:
            raise TruncatedError(f"{self.description}: " + "; ".join(problems))

    def corrupt_volumes(self) -> list[str]:
        """Names of volumes whose bytes do not match the index (reads them all)."""
        bad: list[str] = []
        if self.index is None:
            return bad
        for entry, path in zip(self.index.volumes, self.volume_paths(), strict=True):
            try:
                if volume_digest(path, entry.covered_from) != entry.digest:
                    bad.append(entry.name)
            except (AirbundleError, FileNotFoundError):
                bad.append(entry.name)
        return bad

    def open_first(self) -> BinaryIO:
        """The single bundle file, or the first volume (a regular file: a FIFO
        or a device on the media must not hang or feed a command forever)."""
        return open_regular(self.first, limit=None, what="bundle", error=UsageError)

    def open(self) -> BinaryIO:
        if self.single is not None:
            return self.open_first()
        assert self.index is not None
        if self.repairing is not None:
            from airbundle.adapters.parity import RepairingStream

            return RepairingStream(self.repairing)  # type: ignore[return-value]
        return ConcatReader(self.volume_paths(), self.index, self.description)  # type: ignore[return-value]


def volume_digest(path: Path, covered_from: int) -> Digest:
    h = hashlib.sha256()
    with open_regular(path, limit=None, what="volume", error=ArchiveError) as fh:
        fh.seek(covered_from)
        while chunk := fh.read(DEFAULT_LIMITS.io_chunk_bytes):
            h.update(chunk)
    return Digest("sha256", h.hexdigest())


class ConcatReader:
    """Reads a volume set as one stream, checking each volume as it is finished."""

    def __init__(self, paths: list[Path], index: VolumeIndex, description: str) -> None:
        self._paths = paths
        self._index = index
        self._description = description
        self._number = -1
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._pos_in_volume = 0
        self._next()

    def _next(self) -> None:
        if self._fh is not None:
            self._finish_volume()
            self._fh.close()
        self._number += 1
        self._pos_in_volume = 0
        self._hash = hashlib.sha256()
        self._fh = None
        if self._number < len(self._paths):
            self._fh = open_regular(
                self._paths[self._number],
                limit=self._index.volumes[self._number].size,
                what="volume",
                error=TruncatedError,
            )

    def _finish_volume(self) -> None:
        entry = self._index.volumes[self._number]
        if self._pos_in_volume != entry.size or self._hash.hexdigest() != entry.digest.hex:
            raise ArchiveError(
                f"{self._description}: volume {entry.name} is corrupt: its bytes do not match "
                "the signed volume index",
                hint="copy that volume again from the original media",
            )

    def read(self, n: int = -1) -> bytes:
        while self._fh is not None:
            chunk = self._fh.read(n if n > 0 else DEFAULT_LIMITS.io_chunk_bytes)
            if chunk:
                entry = self._index.volumes[self._number]
                start = self._pos_in_volume
                self._pos_in_volume += len(chunk)
                if self._pos_in_volume > entry.covered_from:
                    self._hash.update(chunk[max(0, entry.covered_from - start) :])
                return chunk
            self._next()
        return b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_VOLUME = re.compile(r"(.+)\.(\d{3}|p\d{2})")


def open_media(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Media:
    """A single bundle file, or the volume set that `path` names (the index,
    any one volume, or a folder holding one index). The index and its
    signatures are regular files read with a cap (docs/security.md)."""
    index_path: Path | None = None
    if path.is_dir():
        found = sorted(path.glob(f"*{INDEX_SUFFIX}"))
        if len(found) != 1:
            raise UsageError(
                f"{path}: expected one *{INDEX_SUFFIX} index in the folder, found {len(found)}"
            )
        index_path = found[0]
    elif path.name.endswith(INDEX_SUFFIX):
        index_path = path
    else:
        match = _VOLUME.fullmatch(path.name)
        if match and (path.parent / f"{match.group(1)}{INDEX_SUFFIX}").exists():
            index_path = path.parent / f"{match.group(1)}{INDEX_SUFFIX}"
        elif not path.exists() and path.with_name(path.name + INDEX_SUFFIX).is_file():
            # `verify NAME.airbundle` where the export wrote NAME.airbundle.001…
            # and NAME.airbundle.volumes: the set is what the user means.
            index_path = path.with_name(path.name + INDEX_SUFFIX)
    if index_path is None:
        if not path.exists():
            raise UsageError(
                f"cannot open bundle {path}: No such file or directory",
                hint="pass the bundle file, a volume set's NAME.volumes index, any of its "
                "volumes, or the folder holding them",
            )
        return Media(str(path), single=path)
    if not index_path.exists():
        raise UsageError(f"cannot read volume index {index_path}: No such file or directory")
    data = read_regular(
        index_path, limit=limits.max_volume_index_bytes, what="volume index", error=ManifestError
    )
    index = VolumeIndex.from_bytes(data, source=str(index_path), limits=limits)
    sig_path = index_path.with_name(index.bundle + SIGNATURE_SUFFIX)
    sig_data = read_optional(
        sig_path,
        limit=limits.max_volume_signatures_bytes,
        what="volume index signatures",
        error=SignatureError,
    )
    signatures = split_signatures(sig_data or b"")
    return Media(
        f"{index_path.parent / index.bundle} ({len(index.volumes)} volumes)",
        index=index,
        index_path=index_path,
        index_bytes=data,
        index_signatures=signatures,
        folder=index_path.parent,
    )
