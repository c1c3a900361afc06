"""Load the base of an incremental export: earlier bundles or inventories."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from airbundle.adapters.media import open_media
from airbundle.errors import UsageError
from airbundle.format.archive import read_prefix_region
from airbundle.format.digest import Digest
from airbundle.format.inventory import Base, base_from_manifest, parse_inventory
from airbundle.format.manifest import BundleManifest
from airbundle.limits import DEFAULT_LIMITS, Limits


def load_base(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Base:
    """A bundle (file or volume set), its extracted manifest.json, or an inventory."""
    if path.suffix == ".json":
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        if b'"BundleManifest"' in data[: 1 << 16]:
            manifest = BundleManifest.from_bytes(data, limits=limits)
            return base_from_manifest(manifest, Digest.sha256_of(data))
        inventory = parse_inventory(data, source=str(path))
        return inventory.as_base(Digest.sha256_of(data))
    media = open_media(path)
    with media.first.open("rb") as fh:
        prefix = read_prefix_region(fh, source=media.description, limits=limits)
    manifest = BundleManifest.from_bytes(prefix.manifest, limits=limits)
    return base_from_manifest(manifest, Digest.sha256_of(prefix.manifest))


def load_bases(paths: Iterable[Path], *, limits: Limits = DEFAULT_LIMITS) -> Base:
    base = Base()
    for path in paths:
        base.merge(load_base(path, limits=limits))
    return base
