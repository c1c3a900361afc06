"""Read YAML (and JSON) files from a folder or from refs of a git repository
(for scanning). A file that cannot be read is named in `skipped`, with why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from airbundle.adapters.fsutil import read_regular
from airbundle.adapters.git import git_binary, run_git
from airbundle.errors import SourceError
from airbundle.format.imagescan import SCANNED_SUFFIXES
from airbundle.limits import DEFAULT_LIMITS, Limits

Skipped = list[tuple[str, str]]  # (path, why it was not read)


def _too_large(limits: Limits) -> str:
    return f"larger than {limits.max_scanned_file_bytes} bytes (not written by hand)"


def folder_yaml(
    root: Path, *, limits: Limits = DEFAULT_LIMITS, skipped: Skipped | None = None
) -> Iterator[tuple[str, str]]:
    """(path relative to root, text) of every YAML or JSON file below root,
    .git excluded; files too large to be written by hand, or unreadable, go
    to `skipped`."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            if not name.endswith(SCANNED_SUFFIXES):
                continue
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            try:
                if path.stat().st_size > limits.max_scanned_file_bytes:
                    _skip(skipped, relative, _too_large(limits))
                    continue
                # A regular file only: a FIFO, or a link to a device, must not
                # hang the scan or feed it forever.
                data = read_regular(
                    path, limit=limits.max_scanned_file_bytes, what="file", error=SourceError
                )
                text = data.decode("utf-8")
            except SourceError as exc:
                _skip(skipped, relative, f"unreadable: {exc.message}")
                continue
            except OSError as exc:
                _skip(skipped, relative, f"unreadable: {exc.strerror or exc}")
                continue
            except UnicodeDecodeError:
                _skip(skipped, relative, "not UTF-8 text")
                continue
            yield relative, text


def _skip(skipped: Skipped | None, path: str, why: str) -> None:
    if skipped is not None:
        skipped.append((path, why))


def repo_yaml(
    repo: Path,
    refs: Sequence[str],
    *,
    what: str,
    limits: Limits = DEFAULT_LIMITS,
    skipped: Skipped | None = None,
) -> Iterator[tuple[str, str, str]]:
    """(ref, path, text) of YAML and JSON files at each ref's tip; each blob is
    read once; those not read go to `skipped` as `REF:PATH`."""
    seen: set[str] = set()
    wanted: list[tuple[str, str, str]] = []  # (oid, ref, path)
    for ref in refs:
        proc = run_git(
            ["-C", str(repo), "ls-tree", "-r", "-z", "--full-tree", ref, "--"],
            error=SourceError,
            what=what,
        )
        for entry in proc.stdout.split(b"\0"):
            if not entry:
                continue
            meta, _, raw_path = entry.partition(b"\t")
            parts = meta.split()
            if len(parts) != 3 or parts[1] != b"blob":
                continue
            path = raw_path.decode("utf-8", "replace")
            oid = parts[2].decode()
            if path.endswith(SCANNED_SUFFIXES) and oid not in seen:
                seen.add(oid)
                wanted.append((oid, ref, path))
    if not wanted:
        return
    # One cat-file process for every blob: thousands of files cost one fork.
    proc = subprocess.run(
        [git_binary(), "-C", str(repo), "cat-file", "--batch"],
        input="".join(f"{oid}\n" for oid, _, _ in wanted).encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SourceError(f"{what}: git cat-file failed: {proc.stderr.decode(errors='replace')}")
    data = proc.stdout
    pos = 0
    for _oid, ref, path in wanted:
        header_end = data.index(b"\n", pos)
        header = data[pos:header_end].split()
        size = int(header[2]) if len(header) == 3 else 0
        body = data[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
        if size > limits.max_scanned_file_bytes:
            _skip(skipped, f"{ref}:{path}", _too_large(limits))
            continue
        try:
            yield ref, path, body.decode("utf-8")
        except UnicodeDecodeError:
            _skip(skipped, f"{ref}:{path}", "not UTF-8 text")
