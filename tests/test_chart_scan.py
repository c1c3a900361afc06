"""Charts in GitOps manifests: a Flux HelmRelease (with its HelmRepository) or an
Argo CD Application with a Helm source naming a chart the bundle does not carry
is reported like a missing image (scan --bundle exits 1; export --check-images
records it); mirror-config lists the carried charts for kustomize."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from airbundle.format.chartscan import ChartFinding, missing, resolve, scan_charts_text
from airbundle.format.digest import Digest
from airbundle.format.helm import ChartEntry
from airbundle.format.reference import ImageReference
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.specfile import load_spec
from support.env import AIRBUNDLE
from support.keys import KeyPair

FLUX = """\
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: podinfo, namespace: flux-system}
spec:
  url: https://stefanprodan.github.io/podinfo
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: podinfo, namespace: apps}
spec:
  chart:
    spec:
      chart: podinfo
      version: ">=6.5.0 <7.0.0"
      sourceRef: {kind: HelmRepository, name: podinfo, namespace: flux-system}
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: from-git}
spec:
  chart:
    spec:
      chart: ./charts/app
      sourceRef: {kind: GitRepository, name: repo}
"""

ARGO = """\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: redis}
spec:
  sources:
    - repoURL: registry.example.com/charts
      chart: redis
      targetRevision: 18.1.0
    - repoURL: https://git.example.com/gitops.git
      path: apps/redis
"""


def entry(name: str, version: str, source: str, ref: str) -> ChartEntry:
    digest = Digest.sha256_of(name.encode())
    return ChartEntry(name, version, ImageReference.parse(ref), source, digest, digest, 1)


def test_flux_and_argo_chart_references_are_found_with_their_repositories() -> None:
    flux, repos = scan_charts_text(FLUX, "flux.yaml")
    argo, _ = scan_charts_text(ARGO, "argo.yaml")
    found = resolve([*flux, *argo], repos)
    assert found == sorted(
        [
            ChartFinding(
                "argo.yaml",
                7,
                "redis",
                "18.1.0",
                "oci://registry.example.com/charts",
                "argocd-helm",
            ),
            ChartFinding(
                "flux.yaml",
                13,
                "podinfo",
                ">=6.5.0 <7.0.0",
                "https://stefanprodan.github.io/podinfo",
                "flux-helm",
                "flux-system/podinfo",
            ),
        ]
    )


def test_a_chart_the_bundle_lacks_is_missing_and_one_it_carries_is_not() -> None:
    flux, repos = scan_charts_text(FLUX, "flux.yaml")
    argo, _ = scan_charts_text(ARGO, "argo.yaml")
    found = resolve([*flux, *argo], repos)
    podinfo = entry(
        "podinfo",
        "6.5.4",
        "https://stefanprodan.github.io/podinfo",
        "stefanprodan.github.io/podinfo/podinfo:6.5.4",
    )
    redis = entry(
        "redis",
        "18.1.0",
        "oci://registry.example.com/charts/redis:18.1.0",
        "registry.example.com/charts/redis:18.1.0",
    )
    assert missing(found, [podinfo, redis]) == []
    # Outside the HelmRelease's range, another repository, another version: missing.
    old = entry("podinfo", "6.4.0", podinfo.source, "stefanprodan.github.io/podinfo/podinfo:6.4.0")
    elsewhere = entry(
        "podinfo", "6.5.4", "https://charts.example.com", "charts.example.com/podinfo:6.5.4"
    )
    other = entry("redis", "18.2.0", redis.source, "registry.example.com/charts/redis:18.2.0")
    assert [f.chart for f in missing(found, [old, elsewhere, other])] == ["redis", "podinfo"]


def test_scan_bundle_reports_a_chart_the_bundle_lacks(signing_key: KeyPair, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mychart").mkdir(parents=True)
    (src / "mychart" / "Chart.yaml").write_text("apiVersion: v2\nname: mychart\nversion: 0.1.0\n")
    spec = src / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: s}\n"
        "charts:\n  - path: mychart\n    repository: registry.example.com/charts\n"
    )
    keys = (load_signing_key(signing_key.private, passphrase=None),)
    bundle = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "s.airbundle", keys=keys)
    )
    gitops = tmp_path / "gitops"
    gitops.mkdir()
    (gitops / "flux.yaml").write_text(FLUX)
    (gitops / "apps.yaml").write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: mine}\n"
        "spec:\n  source:\n    repoURL: registry.example.com/charts\n    chart: mychart\n"
        "    targetRevision: 0.1.0\n"
    )
    proc = subprocess.run(
        [*AIRBUNDLE, "scan", str(gitops), "--bundle", str(bundle.path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(c["chart"], c["kind"], c["file"]) for c in doc["charts"]] == [
        ("podinfo", "flux-helm", "flux.yaml")
    ]
    assert doc["chartReferences"] == 2


def test_mirror_config_lists_the_carried_charts_for_kustomize(
    signing_key: KeyPair, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "mychart").mkdir(parents=True)
    (src / "mychart" / "Chart.yaml").write_text("apiVersion: v2\nname: mychart\nversion: 0.1.0\n")
    spec = src / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: m}\n"
        "charts:\n  - path: mychart\n    repository: charts.example.com/team\n"
    )
    keys = (load_signing_key(signing_key.private, passphrase=None),)
    bundle = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "m.airbundle", keys=keys)
    )
    out = tmp_path / "mirrors"
    subprocess.run(
        [
            *AIRBUNDLE,
            "mirror-config",
            str(bundle.path),
            "--registry",
            "registry.internal:5000/mirror",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    charts = yaml.safe_load((out / "kustomize" / "helmcharts.yaml").read_text())
    assert charts == {
        "helmCharts": [
            {
                "name": "mychart",
                "repo": "oci://registry.internal:5000/mirror/team",
                "version": "0.1.0",
            }
        ]
    }
    idms = yaml.safe_load((out / "openshift" / "imagedigestmirrorset.yaml").read_text())
    assert idms["spec"]["imageDigestMirrors"] == [
        {
            "source": "charts.example.com/team/mychart",
            "mirrors": ["registry.internal:5000/mirror/team/mychart"],
        }
    ]
