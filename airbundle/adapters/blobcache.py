"""A content-addressed blob cache on the connected side.

An export streams each registry blob into the bundle and, on the same pass,
into the cache; the cache file gets its digest name only after its bytes
checked out. A repeated or interrupted export reads what is cached instead
of downloading it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from airbundle.adapters.fsutil import TEMP_MARK, open_regular
from airbundle.errors import SourceError
from airbundle.format.digest import Digest
from airbundle.limits import DEFAULT_LIMITS


@dataclass(frozen=True)
class PruneResult:
    removed: int
    freed: int
    kept: int


class BlobCache:
    def __init__(self, root: Path, *, chunk: int = DEFAULT_LIMITS.io_chunk_bytes) -> None:
        self.root = root
        self.folder = root / "blobs" / "sha256"
        self.chunk = chunk

    def path(self, digest: Digest) -> Path:
        return self.folder / digest.hex

    def get(self, digest: Digest, size: int) -> Iterator[bytes] | None:
        """The cached bytes, or None. The reader downstream re-checks the digest."""
        path = self.path(digest)
        try:
            # A regular file of exactly the size (a FIFO put here must not hang).
            fh = open_regular(path, limit=size, what="cached blob", error=SourceError)
            if os.fstat(fh.fileno()).st_size != size:
                fh.close()
                return None
        except (OSError, SourceError):
            return None
        os.utime(path)  # recently used: prune keeps it

        def chunks() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(self.chunk):
                    yield chunk

        return chunks()

    def tee(self, digest: Digest, size: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass `chunks` through, keeping a copy that becomes `digest` if it is right."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temp = self.folder / f"{TEMP_MARK}{digest.hex}.{os.getpid()}"
            out = temp.open("wb")
        except OSError:
            yield from chunks  # a cache that cannot be written is no reason to fail
            return
        h = hashlib.sha256()
        count = 0
        try:
            for chunk in chunks:
                h.update(chunk)
                count += len(chunk)
                with contextlib.suppress(OSError):
                    out.write(chunk)
                yield chunk
            out.close()
            if count == size and h.hexdigest() == digest.hex:
                temp.replace(self.path(digest))
        finally:
            out.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def prune(self, *, older_than: float | None = None) -> PruneResult:
        """Remove blobs not used for `older_than` seconds (all if None)."""
        removed = freed = kept = 0
        if not self.folder.is_dir():
            return PruneResult(0, 0, 0)
        cutoff = time.time() - older_than if older_than is not None else None
        for path in self.folder.iterdir():
            stat = path.stat()
            if cutoff is None or stat.st_mtime < cutoff or path.name.startswith(TEMP_MARK):
                path.unlink()
                removed += 1
                freed += stat.st_size
            else:
                kept += 1
        return PruneResult(removed, freed, kept)
