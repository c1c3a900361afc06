"""A bundle's git repositories, made servable: a bare repository per repo in
serve's cache folder, indexed from its `repos/NAME.bundle` member.

`git http-backend` needs a repository, not a bundle. The member (already
hashed against the signed manifest by the caller) is streamed a second time
into `git index-pack --strict --stdin`, its header skipped: no copy of the
bundle is written, and git checks every object. The refs are then set to
exactly what the signed manifest lists, in one `update-ref` transaction (git
refuses a ref whose object the pack does not hold), HEAD to the manifest's
head, and the folder is renamed into place only when whole. Measured against
extracting the member and `git clone --mirror`: docs/performance.md.

A repository found in the cache from an earlier run is used only if its refs
and HEAD are exactly the manifest's: git objects are named by their hashes,
so refs equal to the signed ones pin everything a client can fetch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from airbundle.adapters.git import git_binary, list_refs, parse_bundle_header, run_git
from airbundle.errors import AirbundleError, TargetError
from airbundle.format.manifest import RefEntry, RepoEntry
from airbundle.limits import DEFAULT_LIMITS, Limits


def matches(repo: Path, entry: RepoEntry) -> bool:
    """A repository left in the cache holds exactly the manifest's refs and HEAD."""
    if not (repo / "HEAD").is_file():
        return False
    try:
        refs = sorted(list_refs(repo, error=TargetError, what=str(repo)))
    except TargetError:
        return False
    if refs != sorted((r.name, r.target) for r in entry.refs):
        return False
    head = (
        run_git(
            ["--git-dir", str(repo), "symbolic-ref", "-q", "HEAD"],
            error=TargetError,
            what=str(repo),
            check=False,
        )
        .stdout.decode("utf-8", "replace")
        .strip()
    )
    return not entry.head or head == entry.head


def build_repo(
    chunks: Iterator[bytes],
    dest: Path,
    entry: RepoEntry,
    *,
    what: str,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """A bare repository at `dest` (absent) from the git bundle's bytes."""
    if entry.prerequisites:
        raise TargetError(
            f"{what}: the git bundle needs commits it does not carry "
            f"({', '.join(p[:12] for p in entry.prerequisites)}): it cannot be served alone"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        init = ["init", "--bare", "--quiet", "--template="]
        if entry.object_format != "sha1":
            init.append(f"--object-format={entry.object_format}")
        run_git([*init, str(tmp)], error=TargetError, what=what)
        _index_pack(chunks, tmp, what=what, limits=limits)
        _set_refs(tmp, entry.refs, entry.head, what=what)
        try:
            tmp.rename(dest)
        except OSError:
            # Another instance sharing the cache finished first: keep its copy.
            if not matches(dest, entry):
                raise TargetError(f"{what}: {dest} is in the way") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _index_pack(chunks: Iterator[bytes], repo: Path, *, what: str, limits: Limits) -> None:
    head = b""
    for chunk in chunks:
        head += chunk
        end = head.find(b"\n\n")
        if end >= 0 or len(head) > limits.max_git_bundle_header_bytes:
            break
    end = head.find(b"\n\n")
    if end < 0 or end > limits.max_git_bundle_header_bytes:
        raise TargetError(f"{what}: no git bundle header in its first bytes")
    try:
        heads = parse_bundle_header(head[: end + 1], source=what)
    except AirbundleError as exc:
        raise TargetError(exc.message) from None
    if heads.prerequisites:
        raise TargetError(f"{what}: the git bundle needs commits it does not carry")
    with tempfile.TemporaryFile() as errors:
        # stderr to a file: git cannot block on a full pipe while we write.
        proc = subprocess.Popen(
            [git_binary(), "--git-dir", str(repo), "index-pack", "--strict", "--stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"},
        )
        assert proc.stdin is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(head[end + 2 :])
                for chunk in chunks:
                    proc.stdin.write(chunk)
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            message = errors.read(4096).decode("utf-8", "replace").strip()
            raise TargetError(f"{what}: git index-pack refused its pack: {message}")


def _set_refs(repo: Path, refs: Sequence[RefEntry], head: str | None, *, what: str) -> None:
    lines = ["start", *(f"create {r.name} {r.target}" for r in refs), "prepare", "commit"]
    run_git(
        ["--git-dir", str(repo), "update-ref", "--stdin"],
        error=TargetError,
        what=f"{what}: refs as the manifest lists them",
        stdin=("\n".join(lines) + "\n").encode(),
    )
    if head and any(r.name == head for r in refs):
        run_git(
            ["--git-dir", str(repo), "symbolic-ref", "HEAD", head], error=TargetError, what=what
        )
