"""The export cache on the connected side: where it lives, and its git mirrors.

Registry blobs are kept by :class:`airbundle.adapters.blobcache.BlobCache`
under ``CACHE/blobs/sha256/``; each repository's bare mirror under
``CACHE/git/<sha256(url)[:16]>-<name>.git``, so that a re-export fetches only
what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from airbundle.adapters.fsutil import file_lock


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airbundle"


@contextlib.contextmanager
def git_mirror(url: str, name: str, cache_dir: Path | None, scratch: Path) -> Iterator[Path]:
    """The bare repository to fetch `url` into: the cache's mirror of it,
    locked while in use (two exports of one repository take turns); without a
    cache, a repository in `scratch`."""
    if cache_dir is None:
        yield scratch / f"{name}.git"
        return
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    folder = cache_dir / "git"
    with file_lock(folder / f"{key}.lock"):
        yield folder / f"{key}-{name}.git"
