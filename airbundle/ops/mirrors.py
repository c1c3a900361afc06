"""Write mirror configuration for a bundle or an import report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from airbundle.adapters.fsutil import read_regular, write_atomic
from airbundle.adapters.registry.target import read_ca_file
from airbundle.errors import FormatError, UsageError
from airbundle.format import mirrorconfig, schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.mapping import MappingOptions, RegistryLocation, map_images
from airbundle.format.mirrorconfig import CarriedChart, CarriedImage, MirrorTrust
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


def read_report(report: Path, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """An import report: a regular file within its limit, strict JSON, checked
    against schemas/import-report.schema.json before any field is used."""
    data = read_regular(report, limit=limits.max_report_bytes, what="report", error=UsageError)
    what = f"import report {report}"
    doc = loads_strict(
        data, what=what, max_bytes=limits.max_report_bytes, max_depth=8, error=UsageError
    )
    schemas.check(schemas.IMPORT_REPORT, doc, what=what, error=UsageError)
    return doc  # type: ignore[no-any-return]


def charts_from_bundle(bundle: Path, *, limits: Limits = DEFAULT_LIMITS) -> list[CarriedChart]:
    manifest = read_unverified(bundle, limits=limits).manifest
    return [CarriedChart(c.name, c.version, c.ref) for c in manifest.charts]


def charts_from_report(report: Path, *, limits: Limits = DEFAULT_LIMITS) -> list[CarriedChart]:
    """The charts an import report lists (a report of an import before charts: none)."""
    doc = read_report(report, limits=limits)
    try:
        return [
            CarriedChart(str(c["name"]), str(c["version"]), ImageReference.parse(c["ref"]))
            for c in doc.get("charts", [])
        ]
    except (KeyError, TypeError, FormatError) as exc:
        raise UsageError(f"{report}: not an airbundle import report ({exc})") from None


def carried_from_report(
    report: Path, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, list[CarriedImage]]:
    """From the JSON report `import` wrote: the mapping that actually happened."""
    doc = read_report(report, limits=limits)
    try:
        images = []
        for item in doc["images"]:
            target = ImageReference.parse(item["target"])
            images.append(
                CarriedImage(
                    ImageReference.parse(item["source"]), target.registry, target.repository
                )
            )
        images = with_repins(images, doc["images"])
    except (KeyError, FormatError) as exc:
        raise UsageError(f"{report}: not an airbundle import report ({exc})") from None
    return str(doc.get("bundle_name") or "bundle"), images


def with_repins(images: list[CarriedImage], reported: list[dict[str, str]]) -> list[CarriedImage]:
    """The images, each platform subset whose upstream index the mirror refused
    (the report's `sparse` "false") marked with the pin to rewrite."""
    repins = {
        item["source"]: (Digest.parse(item["sourceDigest"]), Digest.parse(item["subsetDigest"]))
        for item in reported
        if item.get("sparse") == "false"
    }
    return [
        dataclasses.replace(i, repin=repins[str(i.ref)]) if str(i.ref) in repins else i
        for i in images
    ]


def trust_record(trust: MirrorTrust, ca_file: Path | None) -> dict[str, object]:
    """How the import reached the registry, for its report."""
    record: dict[str, object] = {"scheme": trust.scheme, "verify": trust.verify}
    if ca_file is not None:
        record["ca_file"] = str(ca_file)
    return record


def trust_from_report(report: Path) -> tuple[MirrorTrust, Path | None] | None:
    """The trust an import report records (None for a report from before it
    was recorded): scheme, verification, and the CA file, read again now."""
    record = read_report(report).get("mirror") or {}
    try:
        scheme, verify = record["scheme"], record["verify"]
        ca_file = Path(record["ca_file"]) if record.get("ca_file") else None
    except KeyError:
        return None
    if not isinstance(scheme, str) or not isinstance(verify, bool):
        raise UsageError(f"{report}: its mirror record is malformed")
    ca = read_ca_file(ca_file) if ca_file is not None else None
    return MirrorTrust(scheme, verify=verify, ca_pem=ca), ca_file


def choose_trust(
    source: Path, *, insecure: bool, skip_tls_verify: bool, ca_file: Path | None
) -> MirrorTrust:
    """The mirror's trust for `mirror-config`: what the options say, else what
    an import report recorded, else HTTPS the system trusts."""
    if sum([insecure, skip_tls_verify, ca_file is not None]) > 1:
        raise UsageError("--insecure, --skip-tls-verify and --ca-file exclude each other")
    if insecure:
        return MirrorTrust.plain_http()
    if skip_tls_verify:
        return MirrorTrust("https", verify=False)
    if ca_file is not None:
        return MirrorTrust("https", ca_pem=read_ca_file(ca_file))
    recorded = trust_from_report(source) if source.suffix == ".json" else None
    return recorded[0] if recorded is not None else MirrorTrust()


def write_mirror_config(
    folder: Path,
    bundle_name: str,
    images: list[CarriedImage],
    *,
    insecure: bool = False,
    trust: MirrorTrust | None = None,
    scope: str = "repository",
    charts: list[CarriedChart] | None = None,
) -> list[Path]:
    """Every file for `images`; `trust` says how clients reach the mirror
    (`insecure` alone: plain HTTP)."""
    items = mirrorconfig.entries(images, scope=scope)
    # kustomize rewrites names: it needs the repositories even when the
    # other files list whole registries.
    repositories = mirrorconfig.entries(images)
    files = mirrorconfig.render_all(
        items,
        bundle=bundle_name,
        insecure=insecure,
        trust=trust,
        repositories=repositories,
        repins=[i for i in images if i.repin is not None],
        charts=charts or (),
        images=images,
    )
    written = []
    for name, text in sorted(files.items()):
        path = folder / name
        write_atomic(path, text.encode("utf-8"))
        written.append(path)
    return written
