"""Plain files on disk: read on the connected side (a file or a folder named in
the spec), written on the disconnected side (`import --files DIR`, and the
static chart repository of `import --charts DIR`).

Writing never leaves the folder: every path is opened component by component
from the folder's own descriptor with O_NOFOLLOW (a link planted inside the
folder, or a file where a folder should be, is refused, never followed), a
file is written under a temporary name in its final folder and renamed over
its name only once its bytes are complete and checked, so a reader sees the
old file or the new one, never part of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from airbundle.adapters.fsutil import TEMP_MARK
from airbundle.errors import MemberDigestError, SourceError, TargetError
from airbundle.format.digest import Digest
from airbundle.format.files import check_file_name
from airbundle.limits import DEFAULT_LIMITS, Limits

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --- the connected side: files named in a spec -------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    name: str  # where it lands, relative
    path: Path  # where it is read from
    size: int
    digest: Digest
    executable: bool


def hash_file(path: Path, *, chunk: int = DEFAULT_LIMITS.io_chunk_bytes) -> tuple[int, Digest]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while data := fh.read(chunk):
            h.update(data)
            size += len(data)
    return size, Digest.from_hasher(h)


def local_files(path: Path, name: str, *, limits: Limits = DEFAULT_LIMITS) -> list[LocalFile]:
    """A file (landing as `name`) or every file under a folder (landing as
    `name/RELATIVE`), hashed. A link to a file is carried as the file; links
    to folders, and anything but regular files, are refused by name."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SourceError(f"file {path}: {exc.strerror}") from None
    if stat.S_ISREG(info.st_mode):
        return [_local(path, name, limits)]
    if not stat.S_ISDIR(info.st_mode):
        raise SourceError(f"file {path}: not a regular file or a folder")
    found: list[LocalFile] = []
    for current, dirs, names in os.walk(path):
        base = Path(current)
        for d in dirs:
            if (base / d).is_symlink():
                raise SourceError(
                    f"folder {path}: {(base / d).relative_to(path)} links to a folder"
                )
        dirs.sort()
        for entry in sorted(names):
            full = base / entry
            rel = full.relative_to(path).as_posix()
            if not full.is_file():
                raise SourceError(f"folder {path}: {rel} is not a regular file")
            if len(found) >= limits.max_folder_files:
                raise SourceError(f"folder {path}: more than {limits.max_folder_files} files")
            found.append(_local(full, f"{name}/{rel}", limits))
    if not found:
        raise SourceError(f"folder {path} holds no files")
    return found


def _local(path: Path, name: str, limits: Limits) -> LocalFile:
    try:
        check_file_name(name, error=SourceError)
        size, digest = hash_file(path, chunk=limits.io_chunk_bytes)
        executable = bool(path.stat().st_mode & 0o111)
    except OSError as exc:
        raise SourceError(f"file {path}: {exc.strerror}") from None
    return LocalFile(name, path, size, digest, executable)


def read_checked(
    path: Path, size: int, digest: Digest, *, chunk: int, what: str
) -> Iterator[bytes]:
    """A file's bytes as planned: one that changed since it was hashed stops
    the export (SourceError), after its last byte."""
    h = hashlib.sha256()
    count = 0
    try:
        with path.open("rb") as fh:
            while data := fh.read(chunk):
                count += len(data)
                h.update(data)
                yield data
    except OSError as exc:
        raise SourceError(f"{what}: {exc.strerror}") from None
    if count != size or Digest.from_hasher(h) != digest:
        raise SourceError(f"{what}: {path} changed while the bundle was written; export again")


# --- the disconnected side: a folder written safely ------------------------------------


@dataclass
class Staged:
    """A file written under a temporary name in its final folder."""

    name: str
    folder: int  # descriptor of the final folder
    temp: str


class SafeFolder:
    """A folder import writes files into, never outside it."""

    def __init__(self, root: Path, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root = root
        self.limits = limits

    def describe(self) -> str:
        return str(self.root)

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TargetError(f"{self.root}: cannot create the folder: {exc.strerror}") from None
        if not self.root.is_dir():
            raise TargetError(f"{self.root} is not a folder")

    @contextlib.contextmanager
    def _folder(self, parts: list[str], *, create: bool) -> Iterator[int | None]:
        """The descriptor of ROOT/parts..., opened without following links;
        None if it does not exist (and `create` is false)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise TargetError(
                            f"{self.root}: {'/'.join(parts)}: {part} is a link or a file, not "
                            "a folder; airbundle does not write through it",
                            hint="remove it, or import into another folder",
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def holds(self, name: str, size: int, digest: Digest) -> bool:
        """Whether `name` is a regular file of exactly `size` bytes of `digest`
        (the size is compared first: a changed file is rarely hashed)."""
        check_file_name(name, error=TargetError)
        parts = name.split("/")
        try:
            with self._folder(parts[:-1], create=False) as folder:
                if folder is None:
                    return False
                try:
                    fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
                except OSError:
                    return False
        except TargetError:
            return False
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                return False
            h = hashlib.sha256()
            while data := fh.read(self.limits.io_chunk_bytes):
                h.update(data)
        return Digest.from_hasher(h) == digest

    def stage(
        self, name: str, size: int, digest: Digest, chunks: Iterable[bytes], *, executable: bool
    ) -> Staged:
        """Write the bytes under a temporary name beside `name`; they must be
        `size` bytes of `digest` (else nothing is left behind)."""
        check_file_name(name, error=TargetError)
        parts = name.split("/")
        with self._folder(parts[:-1], create=True) as folder:
            assert folder is not None
            keep = os.dup(folder)
        temp = f"{TEMP_MARK}{parts[-1][:100]}.{secrets.token_hex(4)}"
        staged = Staged(name, keep, temp)
        try:
            fd = os.open(temp, _CREATE_FLAGS, 0o777 if executable else 0o666, dir_fd=keep)
            h = hashlib.sha256()
            count = 0
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    h.update(chunk)
                    count += len(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if count != size or Digest.from_hasher(h) != digest:
                raise MemberDigestError(
                    f"{name}: received {count} bytes with digest {Digest.from_hasher(h)}, "
                    f"expected {size} bytes of {digest}"
                )
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def commit(self, staged: Staged) -> None:
        """Rename the staged file over its name (atomic; a folder there is an error)."""
        final = staged.name.rsplit("/", 1)[-1]
        try:
            os.replace(staged.temp, final, src_dir_fd=staged.folder, dst_dir_fd=staged.folder)
            os.fsync(staged.folder)
        except IsADirectoryError:
            raise TargetError(
                f"{self.root}: {staged.name} is a folder; the bundle carries a file there"
            ) from None
        finally:
            self.discard(staged)

    def discard(self, staged: Staged) -> None:
        if staged.folder < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.temp, dir_fd=staged.folder)
        os.close(staged.folder)
        staged.folder = -1

    def set_executable(self, name: str, executable: bool) -> None:
        """Give an existing file the executable bits where it has read bits (or take them)."""
        parts = name.split("/")
        with self._folder(parts[:-1], create=False) as folder:
            if folder is None:
                return
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                wanted = mode | ((mode & 0o444) >> 2) if executable else mode & ~0o111
                if wanted != mode:
                    os.fchmod(fd, wanted)
            finally:
                os.close(fd)

    def walk(self) -> Iterator[tuple[str, Path]]:
        """Every regular file under the folder (relative name, path), links
        and airbundle's temporary files left out."""
        if not self.root.is_dir():
            return
        for current, dirs, names in os.walk(self.root):
            base = Path(current)
            dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
            for entry in sorted(names):
                full = base / entry
                if entry.startswith(TEMP_MARK) or full.is_symlink() or not full.is_file():
                    continue
                yield full.relative_to(self.root).as_posix(), full

    def digests(self) -> dict[Digest, str]:
        """Every regular file's sha256 (for an inventory, or to find a file an
        incremental bundle leaves out): digest -> one name holding it."""
        out: dict[Digest, str] = {}
        for name, full in self.walk():
            try:
                _size, digest = hash_file(full, chunk=self.limits.io_chunk_bytes)
            except OSError:
                continue
            out.setdefault(digest, name)
        return out

    def remove_stale_temps(self) -> None:
        """Temporary files a killed import left behind."""
        for current, _dirs, names in os.walk(self.root):
            for entry in names:
                if entry.startswith(TEMP_MARK):
                    with contextlib.suppress(OSError):
                        (Path(current) / entry).unlink()

    def read(self, name: str) -> Iterator[bytes]:
        """The bytes of a file already in the folder (no links followed)."""
        parts = name.split("/")
        with self._folder(parts[:-1], create=False) as folder:
            if folder is None:
                raise TargetError(f"{self.root}: {name} is not there")
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
        with os.fdopen(fd, "rb") as fh:
            while data := fh.read(self.limits.io_chunk_bytes):
                yield data
