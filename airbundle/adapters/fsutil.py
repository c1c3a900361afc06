"""Filesystem helpers: atomic writes, so nothing half-written looks complete."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".airbundle-tmp-"
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) while the block runs.

    flock(2): released when the file is closed, also when the process dies, so
    a killed run never leaves a stale lock behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
