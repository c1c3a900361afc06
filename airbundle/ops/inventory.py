"""Inventory of what the disconnected side's targets hold, for exact deltas."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from airbundle.adapters import git
from airbundle.adapters.files import SafeFolder
from airbundle.adapters.registry.transport import Transport
from airbundle.adapters.targets import open_git_target, open_image_target
from airbundle.errors import UsageError
from airbundle.format.digest import Digest
from airbundle.format.inventory import Inventory
from airbundle.format.manifest import format_time
from airbundle.limits import DEFAULT_LIMITS, Limits


def take_inventory(
    *,
    registry: str | None,
    git_target: str | None,
    repo_names: list[str],
    transport: Transport | None = None,
    limits: Limits = DEFAULT_LIMITS,
    files: Path | None = None,
) -> Inventory:
    """The blobs an image target holds, the ref tips of a git target's
    repositories (all of a folder's, or the named ones of a URL template), and
    the sha256 of every file in a files folder."""
    if registry is None and git_target is None and files is None:
        raise UsageError("say what to inventory: --registry, --git and/or --files")
    blobs: set[Digest] = set()
    target = []
    if registry is not None:
        target.append(f"images={registry}")
        images = open_image_target(registry, transport=transport or Transport(), limits=limits)
        blobs = images.list_blobs()
    repos: dict[str, dict[str, str]] = {}
    if git_target is not None:
        target.append(f"git={git.redact(git_target)}")
        gits = open_git_target(git_target, limits=limits)
        try:
            repos = gits.list_refs(repo_names)
        finally:
            gits.close()
    held: tuple[Digest, ...] = ()
    if files is not None:
        target.append(f"files={files.resolve()}")
        if not files.is_dir():
            raise UsageError(f"--files {files}: not a folder")
        held = tuple(sorted(SafeFolder(files.resolve(), limits=limits).digests()))
    return Inventory(
        format_time(datetime.now(UTC)), " ".join(target), tuple(sorted(blobs)), repos, held
    )
