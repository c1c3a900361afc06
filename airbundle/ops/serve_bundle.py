"""serve --bundle: a bundle opened for serving in place, on import's terms.

1. the cache folder is usable (frame indexes, old bundles' shared members,
   indexed git repositories go there; nothing else is written anywhere);
2. the bundle is opened as `import` opens it: a volume set's signed index,
   then the manifest's signatures against the trust policy, the seek table
   at its signed place (or, for a bundle written before it, one indexing
   pass that also verifies every member, kept in the cache);
3. an expired bundle is refused (unless allowed, loudly), as import does;
4. an incremental bundle is refused: it lacks what its base carried;
5. members of an old bundle's shared frames are extracted to the cache.

Everything before the port is bound: an untrusted bundle never listens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from airbundle.adapters.bundle_store import BundleStore, frames_dir
from airbundle.adapters.cache import default_cache_dir
from airbundle.errors import UsageError
from airbundle.format.freshness import decide
from airbundle.format.manifest import BundleManifest
from airbundle.format.trust import TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.access import open_bundle_access

log = logging.getLogger("airbundle.serve")
Progress = Callable[[int], None]


def default_serve_cache() -> Path:
    return default_cache_dir() / "serve"


def open_bundle_store(
    path: Path,
    policy: TrustPolicy,
    *,
    cache_dir: Path | None = None,
    keep_source_host: bool = False,
    allow_expired: bool = False,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
    now: datetime | None = None,
) -> BundleStore:
    cache = usable_cache(cache_dir or default_serve_cache())
    access = open_bundle_access(
        path, policy, cache_dir=frames_dir(cache), progress=progress, limits=limits, at=now
    )
    try:
        manifest = access.manifest
        decision = decide(
            manifest,
            str(access.manifest_digest),
            None,
            channel=manifest.bundle.channel,
            now=now or datetime.now(UTC),
            allow_expired=allow_expired,
        )
        for note in decision.notes:
            log.warning("%s", note)
        refuse_incremental(manifest, access.source)
        if not access.frames_signed:
            log.info(
                "%s was written before the seek table: its frames are indexed in %s",
                access.source,
                frames_dir(cache),
            )
        store = BundleStore(access, cache, keep_source_host=keep_source_host, limits=limits)
        store.extract_shared(progress)
        return store
    except BaseException:
        access.close()
        raise


def usable_cache(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--cache-dir {folder}: cannot create it: {exc.strerror}",
            hint="serve --bundle needs a small writable folder (frame indexes, git repos)",
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"--cache-dir {folder}: not writable",
            hint="serve --bundle needs a small writable folder (frame indexes, git repos)",
        )
    return folder.resolve()


def refuse_incremental(manifest: BundleManifest, source: str) -> None:
    """An incremental bundle carries only what its base did not: its images
    name layers it leaves out, its git bundles need commits it lacks. Served
    alone, clients would fail half-way through a pull; refused up front."""
    needs = [r.name for r in manifest.repos if r.prerequisites]
    if not manifest.base and not needs:
        return
    base = ", ".join(
        f"bundle {b.get('name')} ({b.get('id')})"
        if b.get("kind") == "bundle"
        else f"the inventory of {b.get('target')} taken {b.get('created')}"
        for b in manifest.base
    )
    what = f"built on {base}" if base else "built on earlier bundles"
    repos = f"; repos needing commits it does not carry: {', '.join(needs)}" if needs else ""
    raise UsageError(
        f"{source} is an incremental bundle ({what}): it lacks the layers and commits "
        f"its base carried, so it cannot be served alone{repos}",
        hint="import the base and then this bundle into oci:DIR and a git folder, and serve "
        "those (serve --registry oci:DIR --git DIR), or serve a full bundle",
    )
