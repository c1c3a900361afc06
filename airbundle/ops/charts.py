"""Charts named in a spec, resolved for export and plan: each chosen version
fetched, read, made into the OCI artifact it travels as, and, with `images:
true`, the images it names added to the images the bundle carries.

A chart from an HTTP repository or from disk becomes an artifact with Helm's
media types whose layer is the .tgz byte for byte; a chart from an OCI
registry is carried exactly as the registry holds it. Templates are not
rendered (there is no helm here): the images are those the chart's values,
its `artifacthub.io/images` annotation and its vendored dependencies name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from airbundle.adapters.chartrepo import ChartArtifactSource, HttpChartRepository, local_chart
from airbundle.adapters.httpfetch import redact
from airbundle.errors import (
    ChartNotFoundError,
    ChartRepositoryError,
    FormatError,
    PinMismatchError,
    SourceError,
    UsageError,
)
from airbundle.format import helm, semver
from airbundle.format.digest import Digest
from airbundle.format.oci import Descriptor, parse_manifest
from airbundle.format.reference import ImageReference
from airbundle.format.spec import BundleSpec, ChartSpec, ImageSpec, SourceRef
from airbundle.limits import Limits
from airbundle.ops.collect import CollectedImage, collect_image, plan_images
from airbundle.ops.sources import Sources

# Where a chart from disk is carried unless the spec says `repository:`.
LOCAL_CHARTS = "charts.local"


@dataclass
class ResolvedChart:
    spec: ChartSpec
    meta: helm.ChartMeta
    ref: ImageReference  # carried under this name
    image: CollectedImage  # the OCI artifact
    chart_digest: Digest
    chart_size: int
    source_text: str  # recorded in the manifest (credentials removed)
    images: list[helm.ChartImage] = field(default_factory=list)  # with `images: true`
    notes: list[str] = field(default_factory=list)
    # Where its signatures may be found: the registry reference of an oci://
    # chart; None for a chart from an HTTP repository or disk (none anywhere).
    registry_ref: ImageReference | None = None

    def image_spec(self) -> ImageSpec:
        """The chart as an image entry, for the image policy and vet commands
        (which judge and vet every artifact the bundle carries)."""
        source = (
            SourceRef("docker", reference=self.registry_ref)
            if self.registry_ref is not None
            else SourceRef("oci", path=self.spec.path, ref=self.spec.text)
        )
        text = f"chart {self.ref} ({self.spec.text})"
        return ImageSpec(source, text, self.ref, None, self.spec.line)

    def entry(self) -> helm.ChartEntry:
        return helm.ChartEntry(
            self.meta.name,
            self.meta.version,
            self.ref,
            self.source_text,
            self.image.root.digest,
            self.chart_digest,
            self.chart_size,
            self.meta.app_version,
        )


@dataclass
class ChartPlan:
    charts: list[ResolvedChart]
    # Images the charts asked for that the spec does not list, planned like
    # spec images (their `requested_by` says which charts), and the spec
    # entries they were planned from (same order: vetting judges them so).
    images: list[CollectedImage]
    notes: list[str]
    specs: list[ImageSpec] = field(default_factory=list)

    def judged(self) -> tuple[list[ImageSpec], list[CollectedImage]]:
        """What the image policy and vet commands see of the charts: each chart
        (an OCI artifact) and each image a chart asks for, spec entry and image
        in the same order."""
        specs = [*(c.image_spec() for c in self.charts), *self.specs]
        return specs, [*(c.image for c in self.charts), *self.images]


def plan_charts(spec: BundleSpec, sources: Sources, spec_images: list[CollectedImage]) -> ChartPlan:
    """Resolve every chart, then the images they ask for that `spec_images`
    do not already carry (those get `requested_by` set instead)."""
    repos: dict[str, HttpChartRepository] = {}
    charts = [_resolve(item, sources, repos) for item in spec.charts]
    _check_unique(charts, spec_images)
    carried = {str(img.ref): img for img in spec_images}
    wanted: dict[str, ImageSpec] = {}
    notes = [n for c in charts for n in c.notes]
    for chart in charts:
        for image in chart.images:
            if image.ref is None:
                notes.append(f"{chart.spec.text}: {image.where}: {image.text!r}: {image.problem}")
                continue
            key = str(image.ref)
            if key in carried:
                carried[key].requested_by.append(str(chart.ref))
                continue
            wanted.setdefault(key, _image_spec(chart.spec, image.ref))
    derived = plan_images(replace(spec, images=tuple(wanted.values())), sources)
    for planned in derived:
        planned.requested_by += [
            str(c.ref)
            for c in charts
            if any(i.ref is not None and str(i.ref) == str(planned.ref) for i in c.images)
        ]
    return ChartPlan(charts, derived, notes, list(wanted.values()))


def _image_spec(chart: ChartSpec, ref: ImageReference) -> ImageSpec:
    """A registry image a chart names; pinned by digest when the lock pins the chart."""
    item = ImageSpec(SourceRef("docker", reference=ref), str(ref), None, None, chart.line)
    pins = dict(chart.pinned.images or ()) if chart.pinned is not None else {}
    if chart.pinned is not None and chart.pinned.images is not None:
        digest = pins.get(str(ref))
        if digest is None:
            raise UsageError(
                f"{chart.text}: names {ref}, which the lock file does not pin for it; "
                "run airbundle plan again"
            )
        return replace(
            item,
            source=SourceRef("docker", reference=ref.with_digest(digest)),
            name=ref,
            pinned=digest,
        )
    return item


def _check_unique(charts: list[ResolvedChart], images: list[CollectedImage]) -> None:
    seen: dict[str, str] = {str(i.ref): i.source_text for i in images}
    for chart in charts:
        key = str(chart.ref)
        if key in seen:
            raise UsageError(
                f"{key} is carried twice ({seen[key]} and {chart.spec.text})",
                hint="give one of the charts `repository:` to carry it under another name",
            )
        seen[key] = chart.spec.text


# --- one chart ----------------------------------------------------------------------------


def _resolve(
    item: ChartSpec, sources: Sources, repos: dict[str, HttpChartRepository]
) -> ResolvedChart:
    if item.kind == "repo":
        return _from_repo(item, sources, repos)
    if item.kind == "oci":
        return _from_registry(item, sources)
    return _from_disk(item, sources.limits)


def _from_repo(
    item: ChartSpec, sources: Sources, repos: dict[str, HttpChartRepository]
) -> ResolvedChart:
    assert item.repo is not None and item.name is not None
    repo = repos.get(item.repo)
    if repo is None:
        repo = repos[item.repo] = HttpChartRepository(item.repo, sources.fetcher(), sources.limits)
    versions = repo.versions(item.name)
    if not versions:
        raise ChartNotFoundError(f"{item.text}: {repo.describe()} has no chart {item.name!r}")
    wanted = item.pinned.version if item.pinned is not None else (item.version or "*")
    chosen = _pick([v.version for v in versions], wanted, item, repo.describe())
    entry = next(v for v in versions if v.version == chosen)
    data = repo.fetch(entry)
    archive = _read(data, item, f"{repo.describe()}: {entry.urls[0]}", sources.limits)
    if (archive.meta.name, archive.meta.version) != (item.name, chosen):
        raise ChartRepositoryError(
            f"{item.text}: {repo.describe()} serves {archive.meta.name} {archive.meta.version} "
            f"as {item.name} {chosen}"
        )
    base = item.repository or helm.repository_base(item.repo)
    return _as_artifact(item, archive, data, base, redact(item.repo), sources.limits)


def _from_disk(item: ChartSpec, limits: Limits) -> ResolvedChart:
    assert item.path is not None
    data = local_chart(item.path, limits=limits)
    archive = _read(data, item, str(item.path), limits)
    return _as_artifact(item, archive, data, item.repository or LOCAL_CHARTS, item.text, limits)


def _as_artifact(
    item: ChartSpec,
    archive: helm.ChartArchive,
    data: bytes,
    base: str,
    source_text: str,
    limits: Limits,
) -> ResolvedChart:
    meta = archive.meta
    _check_pin(item, Digest.sha256_of(data))
    try:
        helm.check_chart_name(meta.name, where=item.text)
        ref = helm.chart_reference(base, meta.name, meta.version)
    except FormatError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None
    artifact = helm.chart_artifact(meta, data)
    source = ChartArtifactSource(artifact, f"{item.text} ({meta.name} {meta.version})")
    image = collect_image(source, ref, None, limits=limits)
    chart = ResolvedChart(item, meta, ref, image, Digest.sha256_of(data), len(data), source_text)
    _find_images(chart, archive, limits)
    return chart


def _from_registry(item: ChartSpec, sources: Sources) -> ResolvedChart:
    """A chart in an OCI registry, carried exactly as the registry holds it."""
    assert item.reference is not None
    reference = item.reference
    if not item.tagged:
        wanted = item.pinned.version if item.pinned is not None else (item.version or "*")
        tags = sources.client(reference.registry).tags(reference.repository)
        chosen = _pick([helm.tag_version(t) for t in tags], wanted, item, reference.name)
        reference = reference.with_tag(helm.version_tag(chosen))
    source = sources.open(SourceRef("docker", reference=reference), text=item.text)
    image = collect_image(source, reference, None, limits=sources.limits)
    layer = _chart_layer(image, item)
    if layer.size > sources.limits.max_chart_bytes:
        raise ChartRepositoryError(f"{item.text}: a chart of {layer.size} bytes is too large")
    data = b"".join(source.open_blob(layer))
    if len(data) != layer.size or Digest.sha256_of(data) != layer.digest:
        raise SourceError(f"{item.text}: the chart layer does not match its digest {layer.digest}")
    archive = _read(data, item, item.text, sources.limits)
    _check_pin(item, layer.digest)
    if item.repository is not None:
        try:
            image.ref = helm.chart_reference(
                item.repository, archive.meta.name, archive.meta.version
            )
        except FormatError as exc:
            raise UsageError(exc.message, hint=exc.hint) from None
    chart = ResolvedChart(
        item,
        archive.meta,
        image.ref,
        image,
        layer.digest,
        layer.size,
        str(reference),
        registry_ref=reference,
    )
    _find_images(chart, archive, sources.limits)
    return chart


def _chart_layer(image: CollectedImage, item: ChartSpec) -> Descriptor:
    """The .tgz layer of a Helm chart artifact (config and layer of Helm's types)."""
    root = image.documents.get(image.root.digest, b"")
    try:
        parsed = parse_manifest(root, declared_type=image.root.media_type, where=item.text)
    except FormatError as exc:
        raise ChartRepositoryError(f"{item.text}: {exc.message}") from None
    config = parsed.blobs[0] if parsed.blobs else None
    layers = [b for b in parsed.blobs[1:] if b.media_type in helm.CHART_LAYER_TYPES]
    if (
        parsed.is_index
        or config is None
        or config.media_type != helm.CONFIG_MEDIA_TYPE
        or not layers
    ):
        raise ChartRepositoryError(
            f"{item.text}: not a Helm chart (a manifest with a {helm.CONFIG_MEDIA_TYPE} config "
            f"and a {helm.CHART_MEDIA_TYPE} layer)",
            hint="carry other OCI artifacts under images:",
        )
    return layers[0]


def _pick(versions: list[str], wanted: str, item: ChartSpec, where: str) -> str:
    try:
        chosen = semver.pick(versions, wanted)
    except FormatError as exc:
        raise UsageError(f"{item.text}: version {wanted!r}: {exc.message}") from None
    if chosen is None:
        known = sorted(
            (v for v in versions if _is_version(v)), key=semver.Version.parse, reverse=True
        )
        shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
        raise ChartNotFoundError(
            f"{item.text}: no version of the chart in {where} matches {wanted!r} "
            f"(it has: {shown or 'none'})"
        )
    return chosen


def _is_version(text: str) -> bool:
    try:
        semver.Version.parse(text)
    except FormatError:
        return False
    return True


def _read(data: bytes, item: ChartSpec, where: str, limits: Limits) -> helm.ChartArchive:
    try:
        return helm.read_chart_archive(data, where=where, limits=limits)
    except FormatError as exc:
        raise ChartRepositoryError(f"{item.text}: {exc.message}") from None


def _check_pin(item: ChartSpec, digest: Digest) -> None:
    if item.pinned is not None and item.pinned.digest != digest:
        raise PinMismatchError(
            f"{item.text}: the chart now has digest {digest}, the lock file pins "
            f"{item.pinned.digest}",
            hint="the source changed since `airbundle plan`: review and plan again",
        )


def _find_images(chart: ResolvedChart, archive: helm.ChartArchive, limits: Limits) -> None:
    if not chart.spec.images:
        return
    images, notes = helm.chart_images(archive, limits=limits)
    chart.images = images
    chart.notes = [f"{chart.spec.text}: {n}" for n in notes]
    chart.notes.append(
        f"{chart.spec.text}: images found in values and annotations, templates not rendered; "
        f"{len(images)} image(s)"
    )


__all__ = ["ChartPlan", "ResolvedChart", "plan_charts"]
