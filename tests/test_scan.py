"""No image left behind: the scanner finds references with file and line, and the
export reports (or, with strict, refuses) images the spec does not carry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import AIRBUNDLE, KeyPair
from hypothesis import given, settings
from hypothesis import strategies as st

from airbundle.errors import SpecError
from airbundle.format.imagescan import scan_text
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.specfile import load_spec

WORKLOADS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: busybox:1.36
      containers:
        - name: web
          image: nginx:1.25
        - name: pinned
          image: quay.io/org/tool@sha256:%s
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          ephemeralContainers:
            - name: debug
              image: ghcr.io/org/debug:2
""" % ("a" * 64)

HELM_VALUES = """\
replicaCount: 1
image:
  registry: registry.example.com
  repository: team/api
  tag: "3.1"
sidecar:
  image:
    repository: docker.io/library/redis
    digest: sha256:%s
""" % ("b" * 64)

KUSTOMIZATION = """\
resources: [deployment.yaml]
images:
  - name: nginx
    newName: registry.example.com/mirror/nginx
    newTag: "1.25"
  - name: app
    digest: sha256:%s
""" % ("c" * 64)


def test_workloads_are_found_with_their_lines() -> None:
    found = scan_text(WORKLOADS, "apps/web.yaml")
    got = {(f.text, f.line, f.kind) for f in found}
    assert got == {
        ("busybox:1.36", 9, "workload"),
        ("nginx:1.25", 12, "workload"),
        (f"quay.io/org/tool@sha256:{'a' * 64}", 14, "workload"),
        ("ghcr.io/org/debug:2", 26, "workload"),
    }
    nginx = next(f for f in found if f.text == "nginx:1.25")
    assert str(nginx.ref) == "docker.io/library/nginx:1.25"


def test_helm_values_conventions_are_assembled() -> None:
    found = scan_text(HELM_VALUES, "chart/values.yaml")
    assert {(f.text, f.line) for f in found} == {
        ("registry.example.com/team/api:3.1", 3),
        (f"docker.io/library/redis@sha256:{'b' * 64}", 8),
    }


def test_kustomize_images_transformer_gives_the_rewritten_reference() -> None:
    found = scan_text(KUSTOMIZATION, "overlay/kustomization.yaml")
    assert {(f.text, f.line, f.kind) for f in found} == {
        (f"app@sha256:{'c' * 64}", 6, "kustomize"),
        ("registry.example.com/mirror/nginx:1.25", 3, "kustomize"),
    }


def test_flux_image_repository_is_found() -> None:
    text = (
        "apiVersion: image.toolkit.fluxcd.io/v1beta2\nkind: ImageRepository\n"
        "metadata: {name: podinfo}\nspec:\n  image: ghcr.io/stefanprodan/podinfo\n"
    )
    (finding,) = scan_text(text, "flux.yaml")
    assert (finding.text, finding.line, finding.kind) == ("ghcr.io/stefanprodan/podinfo", 5, "flux")


def test_unparsable_references_are_reported_not_dropped() -> None:
    text = "kind: Pod\nspec:\n  containers:\n    - image: Not/A/Valid:Ref:At:All\n"
    (finding,) = scan_text(text, "pod.yaml")
    assert finding.ref is None and finding.problem


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_scanner_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(scan_text(text, "x.yaml"), list)


def _gitops_with_missing_image(sample_tree: Path, tmp_path: Path) -> Path:
    work = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(sample_tree), str(work)], check=True)
    app = work / "gitops" / "apps" / "extra"
    app.mkdir(parents=True)
    (app / "deployment.yaml").write_text(WORKLOADS)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    subprocess.run(["git", "-C", str(work / "gitops"), "add", "-A"], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(work / "gitops"), "commit", "-qm", "extra"], check=True, env=env
    )
    return work


def _export(spec: Path, out: Path, key: KeyPair, **kw: object) -> object:
    options = ExportOptions(
        output=out, keys=(load_signing_key(key.private, passphrase=None),), **kw
    )  # type: ignore[arg-type]
    return export_bundle(load_spec(spec), options)


def test_export_reports_missing_images_with_file_and_line(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    work = _gitops_with_missing_image(sample_tree, tmp_path)
    result = _export(work / "spec.yaml", tmp_path / "b.airbundle", signing_key, check_images=True)
    scan = result.manifest.scan  # type: ignore[attr-defined]
    assert scan is not None
    missing = {(m.ref, m.file, m.line) for m in scan.missing}
    assert ("nginx:1.25", "gitops:refs/heads/main:apps/extra/deployment.yaml", 12) in missing
    # The two images the samples carry are found and not reported.
    assert not any("team/hello" in m.ref or "team/app" in m.ref for m in scan.missing)
    # inspect shows it (from the signed manifest).
    out = subprocess.run(
        [*AIRBUNDLE, "inspect", str(tmp_path / "b.airbundle")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MISSING nginx:1.25  at gitops:refs/heads/main:apps/extra/deployment.yaml:12" in out


def test_strict_export_fails_and_writes_nothing(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    work = _gitops_with_missing_image(sample_tree, tmp_path)
    with pytest.raises(
        SpecError,
        match=r"nginx:1\.25 \(gitops:refs/heads/main:apps/extra/"
        r"deployment\.yaml:12\)",
    ):
        _export(
            work / "spec.yaml",
            tmp_path / "out" / "b.airbundle",
            signing_key,
            check_images=True,
            strict=True,
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_scan_cli_against_a_bundle_exits_1_when_images_are_missing(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    work = _gitops_with_missing_image(sample_tree, tmp_path)
    _export(work / "spec.yaml", tmp_path / "b.airbundle", signing_key)
    proc = subprocess.run(
        [*AIRBUNDLE, "scan", str(work / "gitops"), "--bundle", str(tmp_path / "b.airbundle")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "apps/extra/deployment.yaml:12: nginx:1.25" in proc.stdout
    assert "team/hello" not in proc.stdout


def test_argocd_application_kustomize_overrides_are_found() -> None:
    text = (
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\n"
        "spec:\n  source:\n    repoURL: https://git.example/gitops\n    kustomize:\n"
        "      images:\n        - nginx=registry.example.com/nginx:1.25\n"
        "        - quay.io/org/api:2\n"
    )
    found = {(f.text, f.line, f.kind) for f in scan_text(text, "apps/web.yaml")}
    assert found == {
        ("registry.example.com/nginx:1.25", 9, "argocd"),
        ("quay.io/org/api:2", 10, "argocd"),
    }
