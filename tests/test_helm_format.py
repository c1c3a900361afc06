"""Helm charts as values (format/helm.py): Chart.yaml read as Helm reads it, the
OCI artifact Helm pulls, packaged charts, the images a chart names, repository
indexes, packaging a folder; hostile YAML and archives refused by name."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from airbundle.errors import FormatError
from airbundle.format import helm
from airbundle.format.digest import Digest
from airbundle.limits import Limits

CHART_YAML = """\
apiVersion: v2
name: podinfo
version: 6.5.4
appVersion: 6.5.4
description: Podinfo <Helm> chart & friends
home: https://github.com/stefanprodan/podinfo
sources: [https://github.com/stefanprodan/podinfo]
maintainers:
  - name: stefanprodan
    email: stefan@example.com
annotations:
  artifacthub.io/images: |
    - name: podinfo
      image: ghcr.io/stefanprodan/podinfo:6.5.4
dependencies:
  - name: redis
    version: 1.0.0
    repository: https://charts.example.com
"""

VALUES = """\
image:
  repository: ghcr.io/stefanprodan/podinfo
  tag: ""
redis:
  image:
    repository: docker.io/library/redis
    tag: 7.0.7
"""


def tgz(entries: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def chart(
    name: str, version: str, values: str = "", extra: dict[str, bytes] | None = None
) -> bytes:
    files = {
        f"{name}/Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode(),
        f"{name}/values.yaml": values.encode(),
        **(extra or {}),
    }
    return tgz(files)


def test_chart_yaml_values_are_the_text_written() -> None:
    meta = helm.parse_chart_yaml(
        "apiVersion: v2\nname: x\nversion: 1.10.0\nappVersion: 1.10\n", where="Chart.yaml"
    )
    assert (meta.version, meta.app_version) == ("1.10.0", "1.10")


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nversion: 1.0.0\n",  # no apiVersion
        "apiVersion: v2\nname: x\nversion: one\n",  # not semver
        "apiVersion: v2\nname: ../x\nversion: 1.0.0\n",
        "- a list\n",
        "apiVersion: v2\nname: [unclosed\n",
    ],
)
def test_a_malformed_chart_yaml_is_refused(text: str) -> None:
    with pytest.raises(FormatError):
        helm.parse_chart_yaml(text, where="Chart.yaml")


def test_the_config_is_helms_metadata_json() -> None:
    meta = helm.parse_chart_yaml(CHART_YAML, where="Chart.yaml")
    config = helm.config_json(meta)
    doc = json.loads(config)
    # Go field order (json.Marshal keeps it), empty fields left out, < > & escaped.
    assert list(doc) == [
        "name",
        "home",
        "sources",
        "version",
        "description",
        "maintainers",
        "apiVersion",
        "appVersion",
        "annotations",
        "dependencies",
    ]
    assert b"\\u003cHelm\\u003e" in config and b"\\u0026" in config
    assert doc["dependencies"] == [
        {"name": "redis", "version": "1.0.0", "repository": "https://charts.example.com"}
    ]


def test_the_artifact_has_helms_media_types_and_the_tgz_as_its_layer() -> None:
    meta = helm.parse_chart_yaml(CHART_YAML, where="Chart.yaml")
    data = b"the .tgz, byte for byte"
    artifact = helm.chart_artifact(meta, data)
    doc = json.loads(artifact.manifest)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    assert doc["config"]["digest"] == str(Digest.sha256_of(artifact.config))
    assert doc["layers"] == [
        {
            "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": str(Digest.sha256_of(data)),
            "size": len(data),
        }
    ]
    assert doc["annotations"]["org.opencontainers.image.title"] == "podinfo"
    assert doc["annotations"]["org.opencontainers.image.version"] == "6.5.4"
    # Deterministic: the same chart always makes the same manifest.
    assert helm.chart_artifact(meta, data).manifest == artifact.manifest


def test_a_chart_archive_gives_its_images_with_where_they_were_found() -> None:
    redis = chart("redis", "1.0.0", "image:\n  repository: docker.io/bitnami/redis\n  tag: 7.2.4\n")
    data = tgz(
        {
            "podinfo/Chart.yaml": CHART_YAML.encode(),
            "podinfo/values.yaml": VALUES.encode(),
            "podinfo/templates/deployment.yaml": b"image: {{ .Values.image.repository }}\n",
            "podinfo/charts/redis-1.0.0.tgz": redis,
        }
    )
    archive = helm.read_chart_archive(data, where="podinfo-6.5.4.tgz")
    assert archive.meta.name == "podinfo" and [d.meta.name for d in archive.dependencies] == [
        "redis"
    ]
    images, notes = helm.chart_images(archive)
    refs = sorted(str(i.ref) for i in images)
    assert refs == [
        "docker.io/bitnami/redis:7.2.4",  # the vendored dependency's values
        "docker.io/library/redis:7.0.7",  # values
        "ghcr.io/stefanprodan/podinfo:6.5.4",  # values, tag from appVersion; and the annotation
    ]
    podinfo = next(i for i in images if i.ref is not None and "podinfo" in str(i.ref))
    assert "values.yaml:2" in podinfo.where and "appVersion" in podinfo.where
    assert notes == []


def test_an_unvendored_dependency_is_named_in_the_notes() -> None:
    archive = helm.read_chart_archive(
        tgz({"podinfo/Chart.yaml": CHART_YAML.encode()}), where="podinfo.tgz"
    )
    _images, notes = helm.chart_images(archive)
    assert len(notes) == 1 and "redis 1.0.0 is not vendored" in notes[0]


@pytest.mark.parametrize(
    "data",
    [
        b"not gzip at all",
        gzip.compress(b"gzip, but not tar" * 100, mtime=0),
        tgz({"a/values.yaml": b"x: 1\n"}),  # no Chart.yaml
        tgz({"a/Chart.yaml": b"apiVersion: v2\nname: a\nversion: 1.0.0\n", "b/x": b""}),
    ],
    # Named, not shown: workers collecting tests must see the same ids.
    ids=["not-gzip", "gzip-not-tar", "no-chart-yaml", "two-folders"],
)
def test_what_is_not_a_packaged_chart_is_refused(data: bytes) -> None:
    with pytest.raises(FormatError):
        helm.read_chart_archive(data, where="x.tgz")


def test_a_gzip_bomb_is_refused_by_its_unpacked_size() -> None:
    data = tgz(
        {"a/Chart.yaml": b"apiVersion: v2\nname: a\nversion: 1.0.0\n", "a/zeros": bytes(1 << 20)}
    )
    with pytest.raises(FormatError, match="unpacks to more than"):
        helm.read_chart_archive(
            data, where="a.tgz", limits=Limits(max_chart_unpacked_bytes=1 << 19)
        )


def test_an_alias_bomb_in_values_is_a_note_not_a_hang() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    archive = helm.read_chart_archive(chart("a", "1.0.0", bomb), where="a.tgz")
    images, notes = helm.chart_images(archive)
    assert images == [] and "alias bomb" in notes[0]


def test_a_self_referring_alias_is_refused() -> None:
    with pytest.raises(FormatError, match="refers to itself"):
        helm.parse_chart_yaml("apiVersion: v2\nname: &a [*a]\nversion: 1.0.0\n", where="Chart.yaml")


INDEX = """\
apiVersion: v1
entries:
  other:
  - {name: other, version: 1.0.0, urls: [other-1.0.0.tgz]}
  podinfo:
  - name: podinfo
    version: 6.5.4
    digest: 4c1f0000000000000000000000000000000000000000000000000000000000aa
    urls: [podinfo-6.5.4.tgz]
  - name: podinfo
    version: 6.5.3
    urls: [https://mirror.example.com/podinfo-6.5.3.tgz]
generated: "2024-01-01T00:00:00Z"
"""


def test_an_index_lists_one_charts_versions_with_digests() -> None:
    versions = helm.parse_index_versions(INDEX, "podinfo", where="index.yaml")
    assert [v.version for v in versions] == ["6.5.4", "6.5.3"]
    assert str(versions[0].digest).endswith("00aa") and versions[1].digest is None
    assert helm.parse_index_versions(INDEX, "absent", where="index.yaml") == []
    assert (
        helm.chart_url("https://charts.example.com/stable/index.yaml", "podinfo-6.5.4.tgz")
        == "https://charts.example.com/stable/podinfo-6.5.4.tgz"
    )
    assert (
        helm.chart_url("https://charts.example.com/stable/", versions[1].urls[0])
        == "https://mirror.example.com/podinfo-6.5.3.tgz"
    )


@pytest.mark.parametrize(
    "text", ["<html>not found</html>", "apiVersion: v1\n", "entries: [1, 2]\n", "{{{", ""]
)
def test_an_index_that_is_garbage_is_refused(text: str) -> None:
    with pytest.raises(FormatError, match="index"):
        helm.parse_index_versions(text, "podinfo", where="index.yaml")


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_index_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(FormatError):
        helm.parse_index_versions(text, "podinfo", where="index.yaml")


def test_a_static_index_round_trips_newest_first() -> None:
    meta = helm.parse_chart_yaml(CHART_YAML, where="Chart.yaml")
    digest = Digest.sha256_of(b"tgz")
    entries = [
        helm.index_entry(helm.config_json(meta), digest, "2024-01-01T00:00:00Z", where="x"),
        {
            **helm.index_entry(helm.config_json(meta), digest, "2024-01-01T00:00:00Z", where="x"),
            "version": "6.5.10",
            "urls": ["podinfo-6.5.10.tgz"],
        },
    ]
    text = helm.render_index(entries, "2024-01-02T00:00:00Z")
    doc = yaml.safe_load(text)
    assert [e["version"] for e in doc["entries"]["podinfo"]] == ["6.5.10", "6.5.4"]
    assert doc["entries"]["podinfo"][1]["urls"] == ["podinfo-6.5.4.tgz"]
    assert doc["entries"]["podinfo"][1]["digest"] == digest.hex
    again = helm.read_index_entries(text.decode(), where="index.yaml")
    assert helm.render_index(again, "2024-01-02T00:00:00Z") == text


def test_references_of_http_charts() -> None:
    base = helm.repository_base("https://user:pw@Charts.Example.com:8443/stable/")
    assert base == "charts.example.com:8443/stable"
    ref = helm.chart_reference(base, "podinfo", "6.5.4+build.1")
    assert str(ref) == "charts.example.com:8443/stable/podinfo:6.5.4_build.1"
    with pytest.raises(FormatError, match="lowercase") as info:
        helm.chart_reference("charts.example.com/Stable", "podinfo", "1.0.0")
    assert "repository: REGISTRY/PATH" in str(info.value.hint)
    with pytest.raises(FormatError, match="no registry host"):
        helm.chart_reference("charts", "podinfo", "1.0.0")


def test_packaging_is_deterministic_and_helmignore_applies() -> None:
    ignore = helm.HelmIgnore("# comment\n*.bak\nsecrets/\n!keep.bak\n")
    assert ignore.ignored("values.bak", folder=False)
    assert not ignore.ignored("keep.bak", folder=False)
    assert ignore.ignored("secrets", folder=True)
    assert not ignore.ignored("secrets", folder=False)
    assert ignore.ignored("templates/.hidden", folder=False)
    files = [
        ("Chart.yaml", b"apiVersion: v2\nname: a\nversion: 0.1.0\n", False),
        ("run.sh", b"#!/bin/sh\n", True),
    ]
    one = helm.package_chart("a", files)
    assert one == helm.package_chart("a", list(reversed(files)))
    with tarfile.open(fileobj=io.BytesIO(one), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["a/Chart.yaml", "a/run.sh"]
    assert members["a/run.sh"].mode == 0o755 and members["a/Chart.yaml"].mtime == 0
    assert helm.read_chart_archive(one, where="a.tgz").meta.version == "0.1.0"


def _reference_versions(text: str, chart: str) -> list[tuple[str, tuple[str, ...]]]:
    """What a plain full YAML load says the chart's versions are."""
    doc = yaml.safe_load(text)
    return [(str(e["version"]), tuple(e["urls"])) for e in (doc["entries"].get(chart) or [])]


LAYOUTS = {
    "helm": INDEX,
    "four spaces, comments, a block scalar": """\
apiVersion: v1
# a comment
entries:
    other:
    -   name: other
        description: |
            podinfo:
            - not an entry
        version: 1.0.0
        urls: [other.tgz]

    # podinfo's entries
    podinfo:
    -   name: podinfo
        version: 6.5.4
        urls:
        - podinfo-6.5.4.tgz
generated: now
""",
    "quoted key": 'apiVersion: v1\nentries:\n  "podinfo":\n  - {version: 1.0.0, urls: [a.tgz]}\n',
    "flow style": 'apiVersion: v1\nentries: {podinfo: [{version: 2.0.0, urls: ["b.tgz"]}]}\n',
    "absent": "apiVersion: v1\nentries:\n  other:\n  - {version: 1.0.0, urls: [a.tgz]}\n",
    "anchored": (
        "apiVersion: v1\nentries:\n  podinfo: &p\n  - {version: 3.0.0, urls: [c.tgz]}\n  copy: *p\n"
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reading_one_charts_lines_gives_what_the_whole_document_says(layout: str) -> None:
    text = LAYOUTS[layout]
    got = helm.parse_index_versions(text, "podinfo", where="index.yaml")
    assert [(v.version, v.urls) for v in got] == _reference_versions(text, "podinfo")
