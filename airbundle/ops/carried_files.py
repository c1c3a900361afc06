"""Files named in a spec, resolved for export and plan: local files and
folders hashed where they are, URLs downloaded (into the export cache, or a
scratch folder) and checked against their sha256 pin before anything is
written; every name checked, none twice, no file where another's folder is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.files import LocalFile, hash_file, local_files
from airbundle.adapters.fsutil import TEMP_MARK
from airbundle.adapters.httpfetch import HttpFetcher, redact
from airbundle.errors import PinMismatchError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.files import FileEntry, check_file_name, folder_clash
from airbundle.format.spec import BundleSpec, FileSpec, url_base_name
from airbundle.limits import Limits


@dataclass(frozen=True)
class PlannedFile:
    spec: FileSpec
    local: LocalFile  # where its bytes are now, their size and sha256

    @property
    def entry(self) -> FileEntry:
        source = redact(self.spec.url) if self.spec.url else self.spec.text
        return FileEntry(
            self.local.name, self.local.size, self.local.digest, source, self.local.executable
        )


def plan_files(
    spec: BundleSpec,
    fetcher: HttpFetcher,
    *,
    scratch: Path,
    cache: BlobCache | None,
    limits: Limits,
) -> list[PlannedFile]:
    planned = [
        PlannedFile(item, local)
        for item in spec.files
        for local in _resolve(item, fetcher, scratch, cache, limits)
    ]
    names: dict[str, str] = {}
    for p in planned:
        if p.local.name in names:
            raise UsageError(
                f"file {p.local.name!r} comes from both {names[p.local.name]} and {p.spec.text}",
                hint="give one of them another `name:`",
            )
        names[p.local.name] = p.spec.text
    clash = folder_clash(names)
    if clash is not None:
        raise UsageError(f"{clash!r} would be both a file and a folder of files")
    return planned


def _resolve(
    item: FileSpec, fetcher: HttpFetcher, scratch: Path, cache: BlobCache | None, limits: Limits
) -> list[LocalFile]:
    if item.url is not None:
        found = [_download(item, fetcher, scratch, cache, limits)]
    else:
        assert item.path is not None
        name = item.name or item.path.name
        if not name or name in (".", ".."):
            raise UsageError(f"{item.text}: give the file a `name:`")
        found = local_files(item.path, name, limits=limits)
        if item.sha256 is not None:
            if len(found) != 1:
                raise UsageError(f"{item.text}: sha256 pins a file, not a folder")
            _check(item, found[0].digest, item.sha256, "its sha256 pin")
    if item.executable is not None:
        found = [replace_exec(f, item.executable) for f in found]
    if item.pinned is not None:
        have = {f.name: f.digest for f in found}
        if have != dict(item.pinned):
            changed = sorted(set(have.items()) ^ set(item.pinned))
            raise PinMismatchError(
                f"{item.text}: {changed[0][0]} is not what the lock file pins "
                f"({len(changed)} difference(s))",
                hint="the source changed since `airbundle plan`: review and plan again",
            )
    return found


def replace_exec(f: LocalFile, executable: bool) -> LocalFile:
    return LocalFile(f.name, f.path, f.size, f.digest, executable)


def _expected(item: FileSpec) -> Digest | None:
    if item.sha256 is not None:
        return item.sha256
    if item.pinned:
        return item.pinned[0][1]
    return None


def _download(
    item: FileSpec, fetcher: HttpFetcher, scratch: Path, cache: BlobCache | None, limits: Limits
) -> LocalFile:
    """A file by URL: from the cache when its pin is there, else downloaded
    beside it (or into `scratch`) and checked against the pin."""
    assert item.url is not None
    name = check_file_name(item.name or url_base_name(item.url), error=UsageError)
    expected = _expected(item)
    if expected is not None and cache is not None:
        cached = cache.path(expected)
        if cached.is_file():
            size, digest = hash_file(cached, chunk=limits.io_chunk_bytes)
            if digest == expected:
                return LocalFile(name, cached, size, digest, False)
    folder = cache.folder if cache is not None else scratch
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_MARK}download.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with temp.open("wb") as out:
            got = fetcher.download(item.url, out, what=f"file {redact(item.url)}")
        if expected is not None:
            _check(item, got.digest, expected, "its sha256 pin" if item.sha256 else "the lock")
        final = cache.path(got.digest) if cache is not None else scratch / got.digest.hex
        temp.replace(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return LocalFile(name, final, got.size, got.digest, False)


def _check(item: FileSpec, got: Digest, expected: Digest, what: str) -> None:
    if got != expected:
        raise PinMismatchError(
            f"{item.text}: the content has digest {got}, {what} says {expected}",
            hint="check the URL and the pin; nothing was written",
        )
