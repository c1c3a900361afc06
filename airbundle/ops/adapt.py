"""Import into a target as it is: what the target accepts decides how images
land, asked before anything is written, and leaving nothing behind.

* every target repository: an upload session started and cancelled. A refusal
  for a path too deep (NAME_INVALID) flattens the paths as
  `--max-nested-paths` would, as deep as the registry takes them; any other
  (a repository or project nobody created, a read-only registry) stops the
  import up front, naming the repositories and the registry's reason;
* a manifest that lists one layer twice, where the bundle has one: the probe's
  question; a registry that refuses them stops the import before its first blob;
* referrers: where the target has no referrers API, what refers to an image is
  listed under the subject's `sha256-HEX` tag (the distribution spec's
  fallback), after the tags.

`airbundle probe` asks all of it (and whether sparse indexes are taken) with
throw-away pushes in a scratch repository; an import tries a sparse index where
it has one and falls back if refused (ops/importer.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airbundle.adapters.images import ImageTarget
from airbundle.errors import FormatError, TargetError
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest
from airbundle.format.oci import Descriptor, parse_manifest, referrer_of, repeated_layers
from airbundle.limits import Limits

# How registries refuse a repository name they cannot hold (too deep, say).
_NAME_CODES = frozenset({"NAME_INVALID"})
_SHOWN = 10


def _too_deep(refusals: Mapping[str, TargetError]) -> bool:
    return any(_NAME_CODES.intersection(e.codes) for e in refusals.values())


def _depth(repos: Sequence[str]) -> int:
    return max((r.count("/") + 1 for r in repos), default=0)


def adapt(
    manifest: BundleManifest, target: ImageTarget, *, max_nested_paths: int | None
) -> list[str]:
    """Fit the import to the target before anything is written; refuse what
    cannot fit. Returns notes for the report."""
    refs = [i.ref for i in manifest.images]
    refusals = target.preflight()
    notes: list[str] = []
    if refusals and _too_deep(refusals):
        if max_nested_paths is not None:
            raise _refused(target, refusals, "takes no path this deep")
        depth = _depth([target.locate(r) for r in refs])
        for limit in range(depth - 1, 0, -1):
            target.assign(refs, max_nested_paths=limit)
            refusals = target.preflight()
            if not _too_deep(refusals):
                notes.append(
                    f"{target.describe()} takes at most {limit} path components: image paths "
                    f"were flattened as with --max-nested-paths {limit} (give mirror-config "
                    "the same option, or use this import's report)"
                )
                break
    if refusals:
        raise _refused(target, refusals, "refuses pushes into")
    return notes


def _refused(target: ImageTarget, refusals: Mapping[str, TargetError], what: str) -> TargetError:
    repos = sorted(refusals)
    shown = ", ".join(repos[:_SHOWN]) + (
        f" and {len(repos) - _SHOWN} more" if len(repos) > _SHOWN else ""
    )
    reason = refusals[repos[0]].message
    return TargetError(
        f"{target.describe()} {what} {len(repos)} repositor{'y' if len(repos) == 1 else 'ies'} "
        f"this import needs: {shown} ({reason})",
        hint="nothing was written. If the repositories (Harbor, Quay: the project or "
        "organisation; ECR: each repository) must exist first, create them and re-run; for "
        "a registry that limits nesting, --max-nested-paths; `airbundle probe` shows what "
        "the registry accepts",
    )


def refuse_repeated_layers(
    target: ImageTarget,
    documents: Mapping[Digest, bytes],
    media_types: Mapping[Digest, str],
    repos: Mapping[Digest, Sequence[str]],
    limits: Limits,
) -> None:
    """Before the first blob: manifests listing a layer twice, for a target
    that refuses them, stop the import (it would fail at that manifest,
    half-way). The target is asked only when the bundle has one."""
    found = []
    for digest, data in documents.items():
        try:
            parsed = parse_manifest(
                data, declared_type=media_types[digest], where=str(digest), limits=limits
            )
        except FormatError:
            continue  # refused elsewhere, with its own message
        twice = repeated_layers(parsed)
        if twice:
            found.append(f"{', '.join(repos.get(digest, ()))}@{digest} (layer {twice[0]})")
    if not found or target.accepts_repeated_layers() is not False:
        return
    raise TargetError(
        f"{target.describe()} refuses manifests that list a layer twice, and the bundle has "
        f"{len(found)}: {'; '.join(found[:5])}",
        hint="nothing was written; import into a registry that takes them (most do; "
        "self-hosted Quay does not: cosign signatures of a re-signed image are the usual "
        "case), or leave those images out of the spec",
    )


def referrer_groups(
    documents: Mapping[Digest, bytes],
    media_types: Mapping[Digest, str],
    repos: Mapping[Digest, Sequence[str]],
    limits: Limits,
) -> dict[tuple[str, Digest], list[Descriptor]]:
    """(repository, subject) -> the carried manifests that refer to it."""
    groups: dict[tuple[str, Digest], list[Descriptor]] = {}
    for digest, data in documents.items():
        try:
            found = referrer_of(
                data, media_type=media_types[digest], where=str(digest), limits=limits
            )
        except FormatError:
            continue
        if found is None:
            continue
        subject, desc = found
        for repo in repos.get(digest, ()):
            groups.setdefault((repo, subject), []).append(desc)
    return groups


def index_referrers(
    target: ImageTarget,
    documents: Mapping[Digest, bytes],
    media_types: Mapping[Digest, str],
    repos: Mapping[Digest, Sequence[str]],
    limits: Limits,
    *,
    carried_tags: set[tuple[str, str]],
) -> int:
    """After the tags, where the target has no referrers API (or it is not
    known): the fallback tag of every subject, unless the bundle carries that
    tag itself (the source's own fallback index, kept byte for byte). Returns
    how many were written."""
    groups = referrer_groups(documents, media_types, repos, limits)
    todo = {
        key: descs
        for key, descs in groups.items()
        if (key[0], f"{key[1].algorithm}-{key[1].hex}") not in carried_tags
    }
    if not todo or target.referrers_api() is True:
        return 0
    for (repo, subject), descs in sorted(todo.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        target.index_referrers(repo, subject, descs)
    return len(todo)
