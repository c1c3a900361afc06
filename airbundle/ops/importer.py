"""Import: authenticate, then stream verified members into the targets.

Phase 1 streams the archive once: blobs go to the image target as they pass
(each only after its digest checked), git bundles to temporary files. Only
after the whole archive has been verified does phase 2 make anything
visible: refs are staged and checked, then images are tagged and refs moved.
A re-run skips blobs already present, so an interrupted import completes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from airbundle.adapters import git
from airbundle.adapters.fsutil import TEMP_MARK, atomic_output, remove_stale_temps, write_atomic
from airbundle.adapters.oci_layout import OciLayoutTarget
from airbundle.errors import RefUpdateError, TargetError, UsageError
from airbundle.format.archive import BundleReader
from airbundle.format.manifest import BLOB_PREFIX, BundleManifest, MemberEntry, RepoEntry
from airbundle.format.oci import Descriptor
from airbundle.format.paths import check_repo_name
from airbundle.format.tarstream import TarMember
from airbundle.format.trust import TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.verify import Authenticated, authenticate, stream_members

Progress = Callable[[int], None]
REPORT_NAME = "airbundle-import.json"


@dataclass(frozen=True)
class ImportOptions:
    policy: TrustPolicy
    oci_dir: Path | None = None
    git_dir: Path | None = None
    force: bool = False
    at: datetime | None = None
    limits: Limits = DEFAULT_LIMITS


@dataclass
class ImportReport:
    bundle: str
    bundle_id: str = ""
    manifest_digest: str = ""
    blobs_written: int = 0
    blobs_present: int = 0
    images: list[dict[str, str]] = field(default_factory=list)
    repos: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> bytes:
        return (json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n").encode()


def _check_targets(manifest: BundleManifest, options: ImportOptions) -> None:
    if manifest.images and options.oci_dir is None:
        raise UsageError(
            f"the bundle carries {len(manifest.images)} image(s): say where they go with "
            "--registry oci:DIR"
        )
    if manifest.repos and options.git_dir is None:
        raise UsageError(
            f"the bundle carries {len(manifest.repos)} repo(s): say where they go with --git DIR"
        )


class _Sinks:
    def __init__(
        self,
        target: OciLayoutTarget | None,
        git_dir: Path | None,
        manifest: BundleManifest,
        report: ImportReport,
    ) -> None:
        self.target = target
        self.git_dir = git_dir
        self.report = report
        self.repos = {r.member: r for r in manifest.repos}
        self.staged: dict[str, Path] = {}

    def __call__(self, member: TarMember, entry: MemberEntry, chunks: Iterator[bytes]) -> None:
        if entry.path.startswith(BLOB_PREFIX):
            assert self.target is not None
            if self.target.has_blob(entry.digest):
                self.report.blobs_present += 1
                return  # stream_members still drains and verifies the bytes
            self.target.write_blob(entry.digest, entry.size, chunks)
            self.report.blobs_written += 1
        elif entry.path in self.repos:
            assert self.git_dir is not None
            repo = self.repos[entry.path]
            path = self.git_dir / f"{TEMP_MARK}{repo.name}.bundle"
            with atomic_output(path, fsync=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
            self.staged[repo.name] = path


def import_bundle(
    path: Path, options: ImportOptions, *, progress: Progress | None = None
) -> ImportReport:
    source = str(path)
    # git runs with -C in the repository: hand it absolute paths only.
    options = replace(
        options,
        oci_dir=options.oci_dir.resolve() if options.oci_dir else None,
        git_dir=options.git_dir.resolve() if options.git_dir else None,
    )
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot open bundle {path}: {exc.strerror}") from None
    report = ImportReport(bundle=source)
    with fh:
        reader = BundleReader(fh, source=source, limits=options.limits)
        auth = authenticate(
            reader.read_prefix(),
            options.policy,
            source=source,
            at=options.at,
            limits=options.limits,
        )
        manifest = auth.manifest
        report.bundle_id = manifest.bundle.id
        report.manifest_digest = str(auth.manifest_digest)
        _check_targets(manifest, options)
        target = (
            OciLayoutTarget(options.oci_dir, limits=options.limits) if options.oci_dir else None
        )
        if options.git_dir is not None:
            options.git_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(options.git_dir)
        with target.locked() if target else contextlib.nullcontext():
            if target:
                target.prepare()
            sinks = _Sinks(target, options.git_dir, manifest, report)
            try:
                stream_members(reader, manifest, sinks, progress=progress)
                _publish(auth, sinks, target, options, report)
            except BaseException:
                # Staged objects may stay (they are unreferenced); staging refs may not.
                if options.git_dir is not None:
                    for repo in manifest.repos:
                        git.discard_staged(_repo_path(options.git_dir, repo), what=repo.name)
                raise
            finally:
                for staged in sinks.staged.values():
                    with contextlib.suppress(FileNotFoundError):
                        staged.unlink()
    return report


def _repo_path(git_dir: Path, repo: RepoEntry) -> Path:
    # Validated again here: a name from the media becomes a path.
    return git_dir / f"{check_repo_name(repo.name, error=TargetError)}.git"


def _publish(
    auth: Authenticated,
    sinks: _Sinks,
    target: OciLayoutTarget | None,
    options: ImportOptions,
    report: ImportReport,
) -> None:
    manifest = auth.manifest
    refused: list[str] = []
    if options.git_dir is not None:
        for repo in manifest.repos:
            what = f"repo {repo.name!r}"
            refs = [(r.name, r.target) for r in repo.refs]
            repo_path = _repo_path(options.git_dir, repo)
            git.stage_bundle(sinks.staged[repo.name], repo_path, refs, what=what)
            if not options.force:
                refused += git.refused_updates(repo_path, refs, what=what)
    if refused:
        raise RefUpdateError(
            "refusing to move refs: " + "; ".join(refused),
            hint="nothing was changed; re-run with --force to move them anyway",
        )
    if target is not None:
        entries = [
            (str(image.ref), Descriptor(image.media_type, image.digest, image.size))
            for image in manifest.images
        ]
        for image in manifest.images:
            if not target.has_blob(image.digest):
                raise TargetError(
                    f"image {image.ref}: manifest {image.digest} missing after import"
                )
        target.tag(entries)
        report.images = [
            {"ref": ref, "digest": str(d.digest), "target": f"{target.describe()}:{ref}"}
            for ref, d in entries
        ]
    if options.git_dir is not None:
        for repo in manifest.repos:
            refs = [(r.name, r.target) for r in repo.refs]
            repo_path = _repo_path(options.git_dir, repo)
            git.update_refs(repo_path, refs, head=repo.head, what=f"repo {repo.name!r}")
            report.repos.append(
                {
                    "name": repo.name,
                    "path": str(repo_path),
                    "refs": {name: oid for name, oid in refs},
                }
            )
    if target is not None:
        write_atomic(target.root / REPORT_NAME, report.to_json())
