"""Load the base of an incremental export: earlier bundles or inventories."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from airbundle.adapters.fsutil import read_regular
from airbundle.errors import UsageError
from airbundle.format.digest import Digest
from airbundle.format.inventory import Base, base_from_manifest, parse_inventory
from airbundle.format.manifest import BundleManifest
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.unverified import read_unverified


def load_base(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Base:
    """A bundle (file or volume set), its extracted manifest.json, or an inventory."""
    if path.suffix == ".json":
        data = read_regular(
            path, limit=limits.max_inventory_bytes, what="base", error=UsageError
        )
        if b'"BundleManifest"' in data[: 1 << 16]:
            manifest = BundleManifest.from_bytes(data, limits=limits)
            return base_from_manifest(manifest, Digest.sha256_of(data))
        inventory = parse_inventory(data, source=str(path), limits=limits)
        return inventory.as_base(Digest.sha256_of(data))
    bundle = read_unverified(path, limits=limits)
    return base_from_manifest(bundle.manifest, Digest.sha256_of(bundle.prefix.manifest))


def load_bases(paths: Iterable[Path], *, limits: Limits = DEFAULT_LIMITS) -> Base:
    base = Base()
    for path in paths:
        base.merge(load_base(path, limits=limits))
    return base
