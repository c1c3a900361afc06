"""Charts and files in a plan and its lock file.

A chart is pinned by the version chosen (a range resolves once, at plan) and
the sha256 of its .tgz, and with `images: true` by exactly the images it asks
for, each by digest; `export --lock` then fetches that version, refuses other
bytes, and carries those images by digest. A file entry is pinned by every
file it gives (name and sha256): a URL is downloaded again and must match, a
local file or folder must still hold exactly those files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from airbundle.errors import FormatError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.files import check_file_name
from airbundle.format.spec import BundleSpec, ChartPin
from airbundle.ops.carried_files import PlannedFile
from airbundle.ops.charts import ResolvedChart


@dataclass(frozen=True)
class PlannedChart:
    text: str  # the spec entry's identity
    name: str
    version: str
    ref: str  # where it is carried
    digest: str  # the .tgz's sha256
    size: int  # bytes this export would carry for it
    total: int
    # With `images: true`: the images it asks for (ref, digest); else None.
    images: tuple[tuple[str, str], ...] | None = None
    # With --policy: the verdict on the chart as an OCI artifact; None without.
    policy: str | None = None
    accepted: bool = True


@dataclass(frozen=True)
class LockedFile:
    name: str
    size: int
    digest: Digest


@dataclass(frozen=True)
class PlannedFiles:
    """One `files:` entry and the files it gives."""

    text: str
    files: tuple[LockedFile, ...]


def planned_chart(
    chart: ResolvedChart,
    size: int,
    total: int,
    digests: dict[str, str],
    policy: str | None = None,
    accepted: bool = True,
) -> PlannedChart:
    """`digests`: the root digest of every image carried, by reference."""
    images = None
    if chart.spec.images:
        refs = sorted({str(i.ref) for i in chart.images if i.ref is not None})
        images = tuple((ref, digests[ref]) for ref in refs)
    return PlannedChart(
        chart.spec.text,
        chart.meta.name,
        chart.meta.version,
        str(chart.ref),
        str(chart.chart_digest),
        size,
        total,
        images,
        policy,
        accepted,
    )


def planned_files(files: list[PlannedFile]) -> tuple[PlannedFiles, ...]:
    groups: dict[str, list[LockedFile]] = {}
    for f in files:
        groups.setdefault(f.spec.text, []).append(
            LockedFile(f.local.name, f.local.size, f.local.digest)
        )
    return tuple(PlannedFiles(text, tuple(items)) for text, items in groups.items())


def lock_json(charts: tuple[PlannedChart, ...], files: tuple[PlannedFiles, ...]) -> dict[str, Any]:
    """The lock file's `charts` and `files` (left out when the spec has none,
    so a lock without them reads as before)."""
    out: dict[str, Any] = {}
    if charts:
        out["charts"] = [_chart_json(c) for c in charts]
    if files:
        out["files"] = [
            {"spec": g.text, "files": {f.name: str(f.digest) for f in g.files}} for g in files
        ]
    return out


def _chart_json(chart: PlannedChart) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "spec": chart.text,
        "ref": chart.ref,
        "version": chart.version,
        "digest": chart.digest,
    }
    if chart.images is not None:
        doc["images"] = [{"ref": r, "digest": d} for r, d in chart.images]
    return doc


def read_lock_extras(
    doc: dict[str, Any],
) -> tuple[dict[str, ChartPin], dict[str, tuple[tuple[str, Digest], ...]]]:
    """The lock's chart and file pins (KeyError, TypeError or FormatError when
    malformed: the caller names the file)."""
    charts: dict[str, ChartPin] = {}
    for c in doc.get("charts", []):
        images = None
        if "images" in c:
            images = tuple((str(i["ref"]), Digest.parse(i["digest"])) for i in c["images"])
        if not isinstance(c["version"], str) or not c["version"]:
            raise FormatError("a chart's version is not a string")
        charts[c["spec"]] = ChartPin(c["version"], Digest.parse(c["digest"]), images)
    files: dict[str, tuple[tuple[str, Digest], ...]] = {}
    for f in doc.get("files", []):
        files[f["spec"]] = tuple(
            sorted((check_file_name(n), Digest.parse(d)) for n, d in f["files"].items())
        )
    return charts, files


def apply_lock_extras(
    spec: BundleSpec,
    charts: dict[str, ChartPin],
    files: dict[str, tuple[tuple[str, Digest], ...]],
) -> BundleSpec:
    pinned_charts = []
    for chart in spec.charts:
        pin = charts.get(chart.text)
        if pin is None:
            raise UsageError(
                f"chart {chart.text} is not in the lock file; run airbundle plan again"
            )
        if chart.images and pin.images is None:
            raise UsageError(
                f"chart {chart.text}: the lock file pins no images for it; run airbundle plan again"
            )
        pinned_charts.append(replace(chart, pinned=pin))
    pinned_files = []
    for item in spec.files:
        pinned = files.get(item.text)
        if pinned is None:
            raise UsageError(f"file {item.text} is not in the lock file; run airbundle plan again")
        pinned_files.append(replace(item, pinned=pinned))
    return replace(spec, charts=tuple(pinned_charts), files=tuple(pinned_files))
