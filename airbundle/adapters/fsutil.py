"""Filesystem helpers: atomic writes, so nothing half-written looks complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".airbundle-tmp-"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Write to a temporary name beside `path`, rename on success, delete on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_MARK + path.name + ".", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes 0600 files; outputs get the usual umask-derived mode.
        os.fchmod(fd, 0o666 & ~_umask())
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


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_output(path, fsync=fsync) as fh:
        fh.write(data)


def remove_stale_temps(folder: Path) -> None:
    """Temporary files left by an interrupted run are never reused; drop them."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(TEMP_MARK) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
