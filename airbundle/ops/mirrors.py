"""Write mirror configuration for a bundle or an import report."""

from __future__ import annotations

import json
from pathlib import Path

from airbundle.adapters.fsutil import write_atomic
from airbundle.errors import FormatError, UsageError
from airbundle.format import mirrorconfig
from airbundle.format.mapping import MappingOptions, RegistryLocation, map_images
from airbundle.format.mirrorconfig import CarriedImage
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.unverified import read_unverified


def carried_from_bundle(
    bundle: Path,
    location: RegistryLocation,
    options: MappingOptions,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[str, list[CarriedImage]]:
    """Where `import --registry LOCATION` puts (or put) each image of a bundle."""
    manifest = read_unverified(bundle, limits=limits).manifest
    mapping = map_images([i.ref for i in manifest.images], location, options)
    images = [CarriedImage(ref, location.host, repo) for ref, repo in mapping.items()]
    return manifest.bundle.name, images


def carried_from_report(report: Path) -> tuple[str, list[CarriedImage]]:
    """From the JSON report `import` wrote: the mapping that actually happened."""
    try:
        doc = json.loads(report.read_text("utf-8"))
        images = []
        for item in doc["images"]:
            target = ImageReference.parse(item["target"])
            images.append(
                CarriedImage(
                    ImageReference.parse(item["source"]), target.registry, target.repository
                )
            )
    except (OSError, ValueError, KeyError, TypeError, FormatError) as exc:
        raise UsageError(f"{report}: not an airbundle import report ({exc})") from None
    return str(doc.get("bundle_name") or "bundle"), images


def write_mirror_config(
    folder: Path,
    bundle_name: str,
    images: list[CarriedImage],
    *,
    insecure: bool,
    scope: str = "repository",
) -> list[Path]:
    items = mirrorconfig.entries(images, scope=scope)
    written = []
    for name, text in sorted(
        mirrorconfig.render_all(items, bundle=bundle_name, insecure=insecure).items()
    ):
        path = folder / name
        write_atomic(path, text.encode("utf-8"))
        written.append(path)
    return written
