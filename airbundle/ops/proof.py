"""Proof of an import: before success is recorded, ask every target for what the
import was to publish, the way a client will ask for it.

Each image answers under its tag (or its digest, when it has no tag) with the
digest the signed manifest names (ImageTarget.published: a HEAD per reference on
a registry, index.json and the blob on disk for an OCI layout). Each ref of each
repo points at the commit the manifest names (GitTarget.list_refs: for-each-ref
on a bare repository, ls-remote on a server). Anything else is a
NotPublishedError naming every reference at fault, raised before the state moves
(docs/security.md, section 4, step 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from airbundle.adapters.pipeline import parallel
from airbundle.errors import AirbundleError, NotPublishedError
from airbundle.format.manifest import BundleManifest, ImageEntry
from airbundle.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from airbundle.adapters.git_targets import GitTarget
    from airbundle.adapters.images import ImageTarget
    from airbundle.ops.importer import ImportReport

# Shown in full up to this many; the count says the rest.
_SHOWN = 10


def unpublished(
    manifest: BundleManifest,
    images: ImageTarget | None,
    gits: GitTarget | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """What the targets do not hold as the manifest says: one line each."""
    problems: list[str] = []
    if images is not None and manifest.images:
        found = parallel(
            lambda image: _image(image, images),
            list(manifest.images),
            workers=limits.import_workers,
        )
        problems += [p for p in found if p]
    if gits is not None and manifest.repos:
        current = gits.list_refs([r.name for r in manifest.repos])
        for repo in manifest.repos:
            problems += _refs(
                repo.name, [(r.name, r.target) for r in repo.refs], current.get(repo.name), gits
            )
    return problems


def prove_published(
    manifest: BundleManifest,
    images: ImageTarget | None,
    gits: GitTarget | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    problems = unpublished(manifest, images, gits, limits=limits)
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise NotPublishedError(
            f"the import of bundle {manifest.bundle.name} did not take: "
            + "; ".join(problems[:_SHOWN])
            + more
        )


def still_held(
    manifest: BundleManifest,
    images: ImageTarget | None,
    gits: GitTarget | None,
    report: ImportReport,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> bool:
    """For a bundle the state says was imported already (a replay): True if
    the targets still hold it all, so nothing needs doing. Otherwise (a target
    restored from an older backup, or emptied, under a state that remembers)
    a note says what is missing, and the caller imports the bundle again: the
    same authentic bundle, at the sequence already accepted."""
    try:
        problems = unpublished(manifest, images, gits, limits=limits)
    except AirbundleError as exc:
        problems = [exc.message]
    if problems:
        report.notes.append(
            "the state records this bundle as imported, but the target lacks "
            + "; ".join(problems[:_SHOWN])
            + ": imported again"
        )
    return not problems


def _image(image: ImageEntry, images: ImageTarget) -> str | None:
    reference = image.ref.tag or str(image.digest)
    where = f"{images.describe()}: {images.locate(image.ref)}:{reference}"
    try:
        digest = images.published(image.ref)
    except AirbundleError as exc:
        return f"{where} cannot be checked ({exc.message})"
    if digest is None:
        return f"{where} is missing"
    # A platform subset's tag names the source's own index where the target took
    # it (sparse), else the subset index: both are the signed manifest's.
    carried = {image.digest, image.source_digest} if image.carries_source_index else {image.digest}
    if digest not in carried:
        return f"{where} is {digest}, not {image.digest}"
    return None


def _refs(
    name: str, refs: Sequence[tuple[str, str]], current: dict[str, str] | None, gits: GitTarget
) -> list[str]:
    what = f"repo {name!r}"
    if current is None:
        return [f"{what}: {gits.describe(name)} is missing"]
    problems = []
    for ref, oid in refs:
        now = current.get(ref)
        if now is None:
            problems.append(f"{what}: {gits.describe(name)} has no {ref}")
        elif now != oid:
            problems.append(f"{what}: {ref} on {gits.describe(name)} is {now[:12]}, not {oid[:12]}")
    return problems
