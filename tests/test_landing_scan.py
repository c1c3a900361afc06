"""More of GitOps scanned (issue 17): Tekton, Helm values as strings and
{name, tag}, kustomize helmCharts and name-only overrides, JSON manifests,
Argo CD Helm parameters and values; files that cannot be read are reported,
never skipped; a reference is carried only in a spelling the mirror
configuration rewrites."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from airbundle.format.imagescan import (
    Carried,
    count_line,
    missing,
    resolve_overrides,
    scan_text,
)
from airbundle.format.mirrorconfig import CarriedImage, entries, render_all
from airbundle.format.reference import ImageReference
from airbundle.ops.scan import scan_folder
from support.env import AIRBUNDLE
from support.kustomize import rewrite

DIGEST = "sha256:" + "d" * 64

TEKTON = """\
apiVersion: tekton.dev/v1
kind: Task
metadata: {name: build}
spec:
  stepTemplate:
    image: registry.example.com/ci/base:1
  steps:
    - name: compile
      image: golang:1.22
    - name: test
      script: go test ./...
  sidecars:
    - name: docker
      image: docker:24-dind
---
apiVersion: tekton.dev/v1beta1
kind: ClusterTask
metadata: {name: lint}
spec:
  steps:
    - image: quay.io/org/lint:3
---
apiVersion: tekton.dev/v1
kind: Pipeline
metadata: {name: release}
spec:
  tasks:
    - name: package
      taskSpec:
        steps:
          - image: alpine:3.19
---
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: once}
spec:
  taskSpec:
    steps:
      - image: busybox:1.36
---
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: nightly}
spec:
  pipelineSpec:
    tasks:
      - name: scan
        taskSpec:
          sidecars:
            - image: redis:7
          steps:
            - image: ghcr.io/org/scanner@DIGEST
""".replace("DIGEST", DIGEST)


def _found(text: str, path: str) -> set[tuple[str, int, str]]:
    return {(f.text, f.line, f.kind) for f in scan_text(text, path)}


def test_tekton_steps_sidecars_and_step_templates_are_found_once() -> None:
    assert _found(TEKTON, "ci/tekton.yaml") == {
        ("registry.example.com/ci/base:1", 6, "tekton"),
        ("golang:1.22", 9, "tekton"),
        ("docker:24-dind", 14, "tekton"),
        ("quay.io/org/lint:3", 21, "tekton"),
        ("alpine:3.19", 31, "tekton"),
        ("busybox:1.36", 39, "tekton"),
        ("redis:7", 50, "tekton"),
        (f"ghcr.io/org/scanner@{DIGEST}", 52, "tekton"),
    }


def test_helm_values_as_one_string_or_name_and_tag() -> None:
    values = (
        'image: "registry.example.com/team/api:3.1"\n'
        "worker:\n"
        "  image:\n"
        "    name: quay.io/org/worker\n"
        '    tag: "2.0"\n'
        "proxy:\n"
        "  image: nginx\n"
        "  enabled: true\n"
        "logo:\n"
        "  image: true\n"
    )
    assert _found(values, "chart/values.yaml") == {
        ("registry.example.com/team/api:3.1", 1, "helm-values"),
        ("quay.io/org/worker:2.0", 4, "helm-values"),
        ("nginx", 7, "helm-values"),
    }


def test_flux_image_repository_is_counted_once() -> None:
    text = (
        "apiVersion: image.toolkit.fluxcd.io/v1beta2\nkind: ImageRepository\n"
        "metadata: {name: podinfo}\nspec:\n  image: ghcr.io/stefanprodan/podinfo\n"
    )
    (finding,) = scan_text(text, "flux.yaml")
    assert finding.kind == "flux" and finding.by_name


def test_kustomize_helm_charts_values_inline() -> None:
    text = (
        "resources: [ns.yaml]\n"
        "helmCharts:\n"
        "  - name: redis\n"
        "    repo: https://charts.example.com\n"
        "    valuesInline:\n"
        "      image:\n"
        "        registry: docker.io\n"
        "        repository: bitnami/redis\n"
        "        tag: 7.2.4\n"
        "      metrics:\n"
        "        image: docker.io/bitnami/redis-exporter:1.58\n"
    )
    assert _found(text, "redis/kustomization.yaml") == {
        ("docker.io/bitnami/redis:7.2.4", 7, "helm-values"),
        ("docker.io/bitnami/redis-exporter:1.58", 11, "helm-values"),
    }


def test_json_manifests_are_scanned_with_lines_even_with_tabs() -> None:
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "nginx:1.25"}]}}},
    }
    text = json.dumps(doc, indent="\t")
    (finding,) = scan_text(text, "apps/web.json")
    assert (finding.text, finding.kind) == ("nginx:1.25", "workload")
    assert text.splitlines()[finding.line - 1].strip().startswith('"image"')


def test_argocd_helm_parameters_values_and_values_object() -> None:
    text = """\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: api}
spec:
  source:
    repoURL: https://charts.example.com
    chart: api
    helm:
      parameters:
        - name: image.repository
          value: registry.example.com/team/api
        - name: image.tag
          value: "4.2"
        - name: worker.image
          value: quay.io/org/worker:2
        - name: replicaCount
          value: "3"
      values: |
        sidecar:
          image: ghcr.io/org/sidecar:1.1
      valuesObject:
        cache:
          image:
            repository: redis
            tag: "7"
"""
    assert _found(text, "apps/api.yaml") == {
        ("registry.example.com/team/api:4.2", 11, "argocd"),
        ("quay.io/org/worker:2", 15, "argocd"),
        ("ghcr.io/org/sidecar:1.1", 20, "helm-values"),
        ("redis:7", 24, "helm-values"),
    }


def test_helm_templates_and_broken_yaml_are_reported_not_skipped(tmp_path: Path) -> None:
    chart = tmp_path / "charts" / "api"
    (chart / "templates").mkdir(parents=True)
    (chart / "templates" / "deployment.yaml").write_text(
        "spec:\n  containers:\n    - image: {{ .Values.image.repository }}:{{ .Values.tag }}\n"
    )
    (chart / "values.yaml").write_text("image:\n  repository: nginx\n  tag: '1.25'\n")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\nb: c\n")
    (tmp_path / "ok.yml").write_text("kind: Pod\nspec:\n  containers:\n    - image: redis:7\n")
    files, found = scan_folder(tmp_path)
    assert files == 4
    unscanned = {f.path: f.problem for f in found if not f.scanned}
    assert set(unscanned) == {"charts/api/templates/deployment.yaml", "broken.yaml"}
    assert "Helm template" in (unscanned["charts/api/templates/deployment.yaml"] or "")
    assert "not valid YAML" in (unscanned["broken.yaml"] or "")
    assert {f.text for f in found if f.scanned} == {"nginx:1.25", "redis:7"}
    proc = subprocess.run(
        [*AIRBUNDLE, "scan", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "broken.yaml: not scanned (not valid YAML" in proc.stdout
    assert "charts/api/templates/deployment.yaml: not scanned (a Helm template" in proc.stdout
    assert proc.stderr.strip() == "2 references in 4 files; 2 files not scanned"


def test_the_summary_line_reads_clearly() -> None:
    assert count_line(23, 13, 8) == "23 references in 13 files; 8 not in the bundle"
    assert count_line(1, 1) == "1 reference in 1 file"
    assert (
        count_line(0, 2, 0, 1) == "0 references in 2 files; 0 not in the bundle; 1 file not scanned"
    )


def _kustomize_case(tmp_path: Path, override: dict[str, str]) -> list[tuple[str, str]]:
    """(scan's text, kustomize's rendering) for one override of a two-tag base."""
    (tmp_path / "deployment.yaml").write_text(
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - image: nginx:1.25\n        - image: nginx:1.26\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["deployment.yaml"], "images": [override]})
    )
    _, found = scan_folder(tmp_path)
    scanned = sorted(f.text for f in found if f.kind == "kustomize")
    rendered = sorted(rewrite([override], v) for v in ("nginx:1.25", "nginx:1.26"))
    return list(zip(scanned, rendered, strict=True))


def test_kustomize_new_name_keeps_the_original_tags(tmp_path: Path) -> None:
    pairs = _kustomize_case(tmp_path, {"name": "nginx", "newName": "mirror.local/m/nginx"})
    assert pairs == [
        ("mirror.local/m/nginx:1.25", "mirror.local/m/nginx:1.25"),
        ("mirror.local/m/nginx:1.26", "mirror.local/m/nginx:1.26"),
    ]


def test_kustomize_digest_replaces_the_tag(tmp_path: Path) -> None:
    override = {"name": "nginx", "newName": "mirror.local/m/nginx", "digest": DIGEST}
    (found,) = {
        f.text
        for f in resolve_overrides(
            scan_text(yaml.safe_dump({"images": [override]}), "kustomization.yaml")
        )
    }
    assert found == f"mirror.local/m/nginx@{DIGEST}" == rewrite([override], "nginx:1.25")


def test_kustomize_new_name_without_originals_matches_by_name() -> None:
    text = "images:\n  - name: nginx\n    newName: registry.example.com/team/nginx\n"
    (finding,) = resolve_overrides(scan_text(text, "overlay/kustomization.yaml"))
    assert finding.by_name and finding.ref is not None
    carried = Carried(
        frozenset({"registry.example.com/team/nginx:2"}),
        frozenset(),
        frozenset({"registry.example.com/team/nginx"}),
    )
    assert missing([finding], carried) == []


SPELLINGS = [
    "nginx:1.25",
    "library/nginx:1.25",
    "docker.io/nginx:1.25",
    "docker.io/library/nginx:1.25",
    "index.docker.io/nginx:1.25",
    "index.docker.io/library/nginx:1.25",
    "Docker.io/nginx:1.25",
    "registry-1.docker.io/library/nginx:1.25",
    "nginx:1.26",
]


def test_scan_counts_as_carried_exactly_what_the_kustomize_list_rewrites() -> None:
    """The two halves must agree: scan --bundle says "carried" for a spelling
    only if the mirror configuration's images.yaml sends it to the mirror."""
    carried_ref = ImageReference.parse("docker.io/library/nginx:1.25")
    carried = Carried(frozenset({str(carried_ref)}), frozenset(), frozenset({carried_ref.name}))
    files = render_all(
        entries([CarriedImage(carried_ref, "mirror.local", "m/library/nginx")]), bundle="b"
    )
    images = yaml.safe_load(files["kustomize/images.yaml"])["images"]
    text = "kind: Pod\nspec:\n  containers:\n" + "".join(f"    - image: {s}\n" for s in SPELLINGS)
    findings = scan_text(text, "pod.yaml")
    lacking = {f.text for f in missing(findings, carried)}
    for written in SPELLINGS:
        sent_to_mirror = rewrite(images, written).startswith("mirror.local/")
        is_carried = ImageReference.parse(written) == carried_ref
        assert (written not in lacking) == (sent_to_mirror and is_carried), written
