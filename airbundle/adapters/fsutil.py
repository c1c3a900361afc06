"""Filesystem helpers: atomic writes, so nothing half-written looks complete;
capped reads of regular files only, so nothing read from media or state can
hang a command (a FIFO, a device) or exhaust its memory (a huge file)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from airbundle.errors import AirbundleError

TEMP_MARK = ".airbundle-tmp-"
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_regular(
    path: Path, limit: int | None, what: str, error: type[AirbundleError], writable: bool = False
) -> BinaryIO:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {_kind(mode)}, not a regular file")
        access = os.O_RDWR if writable else os.O_RDONLY
        fd = os.open(path, access | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, AirbundleError):
        raise
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")
        if limit is not None and st.st_size > limit:
            raise error(
                f"{what} {path} is {st.st_size} bytes, more than the {limit} allowed; "
                "it was not read"
            )
        return os.fdopen(fd, "r+b" if writable else "rb")
    except BaseException:
        os.close(fd)
        raise


def _read(path: Path, limit: int, what: str, error: type[AirbundleError]) -> bytes:
    with _open_regular(path, limit, what, error) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is more than the {limit} bytes allowed; it was not read")
    return data


def open_regular(
    path: Path,
    *,
    limit: int | None,
    what: str,
    error: type[AirbundleError],
    writable: bool = False,
) -> BinaryIO:
    """Open `path` for reading if it is a regular file (symbolic links followed)
    of at most `limit` bytes; else raise `error` naming it. Nothing is read.

    The type is checked before the open (opening a FIFO blocks until a writer
    comes; opening some devices acts on them) and again on the descriptor, so
    a file swapped in between is caught too. `writable`: open it for reading
    and writing in place (co-signing).
    """
    try:
        return _open_regular(path, limit, what, error, writable)
    except FileNotFoundError:
        raise error(f"cannot read {what} {path}: No such file or directory") from None


def read_regular(path: Path, *, limit: int, what: str, error: type[AirbundleError]) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see open_regular);
    a file that grows past the limit while it is read is refused too."""
    try:
        return _read(path, limit, what, error)
    except FileNotFoundError:
        raise error(f"cannot read {what} {path}: No such file or directory") from None


def read_optional(
    path: Path, *, limit: int, what: str, error: type[AirbundleError]
) -> bytes | None:
    """read_regular, or None if there is no such file."""
    try:
        return _read(path, limit, what, error)
    except FileNotFoundError:
        return None


def open_lock_file(path: Path, *, what: str, error: type[AirbundleError]) -> BinaryIO:
    """Open (or create) a lock file: a regular file only. O_NONBLOCK: opening a
    FIFO put in its place must not wait for a writer."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise error(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {_kind(mode)}, not a regular file")
        return os.fdopen(fd, "r+b")
    except BaseException:
        os.close(fd)
        raise


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new file beside `path`, created with `mode` less the umask by the
    kernel (the mode any output gets). The umask is never read: os.umask sets
    it, for every thread of the process at once."""
    for _ in range(100):
        tmp = path.parent / f"{TEMP_MARK}{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, _CREATE, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, *, fsync: bool = True, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Write to a temporary name beside `path`, rename on success, delete on failure.

    The file gets `mode` less the umask (by default the usual mode of an output;
    a private key passes 0o600, so it is never readable by others, not even
    before a chmod)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        tmp.replace(path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: Path, data: bytes, *, fsync: bool = True, mode: int = 0o666) -> None:
    with atomic_output(path, fsync=fsync, mode=mode) as fh:
        fh.write(data)


def remove_stale_temps(folder: Path) -> None:
    """Temporary files left by an interrupted run are never reused; drop them."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(TEMP_MARK) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def remove_leftovers(out: Path) -> None:
    """Temporary files and folders an earlier, killed run left for the same output."""
    for stale in out.parent.glob(f"{TEMP_MARK}{out.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


@contextlib.contextmanager
def file_lock(
    path: Path, *, what: str = "lock file", error: type[AirbundleError] = AirbundleError
) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) while the block runs.

    flock(2): released when the file is closed, also when the process dies, so
    a killed run never leaves a stale lock behind. The lock must be a regular
    file (open_lock_file): a FIFO or a device put in its place is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock_file(path, what=what, error=error) as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
