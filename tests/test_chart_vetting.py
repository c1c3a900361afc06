"""Charts, and the images they ask for, go through the vetting gate like every
image: the image policy judges them at plan and export (and the far side again
at import), vet commands run on them, and `import --require-vetted` finds
their records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.env import AIRBUNDLE
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import push_oci_layout

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIRBUNDLE, *map(str, args)], capture_output=True, text=True, check=False
    )


def policy(path: Path, scopes: dict[str, list[dict[str, str]]]) -> Path:
    path.write_text(json.dumps({"default": REJECT, "transports": {"docker": scopes}}))
    return path


def chart_spec(tmp_path: Path, registry: Registry) -> Path:
    chart = tmp_path / "src" / "app"
    chart.mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: app\nversion: 1.0.0\n")
    (chart / "values.yaml").write_text(
        f"image:\n  repository: {registry.host}/team/hello\n  tag: '1.0'\n"
    )
    spec = tmp_path / "src" / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: v}\n"
        "charts:\n  - path: app\n    repository: charts.example.com/team\n    images: true\n"
    )
    return spec


def test_a_chart_and_its_images_are_judged_vetted_and_required_on_both_sides(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    spec = chart_spec(tmp_path, registry)
    accepting = policy(
        tmp_path / "accept.json",
        {"charts.example.com": ACCEPT, f"{registry.host}/team": ACCEPT},
    )
    out = tmp_path / "v.airbundle"
    proc = cli(
        "export", spec, "-o", out, "--key", signing_key.private, "--policy", accepting,
        "--vet-command", "skopeo --insecure-policy inspect --raw oci:{layout}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(cli("inspect", "--json", out).stdout)
    vetted = sorted(e["ref"] for e in doc["vetting"]["images"])
    assert vetted == sorted(
        ["charts.example.com/team/app:1.0.0", f"{registry.host}/team/hello:1.0"]
    )
    assert all([v["exitCode"] for v in e["vets"]] == [0] for e in doc["vetting"]["images"])
    far = tmp_path / "far"
    proc = cli(
        "import", out, "--trust", signing_key.public, "--registry", f"oci:{far}/images",
        "--state-dir", far / "state", "--policy", accepting, "--require-vetted",
        "--charts", far / "charts",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (far / "charts" / "app-1.0.0.tgz").is_file()


def test_a_policy_that_does_not_accept_a_chart_stops_plan_and_export(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    spec = chart_spec(tmp_path, registry)
    images_only = policy(tmp_path / "images.json", {f"{registry.host}/team": ACCEPT})
    plan = cli("plan", spec, "--policy", images_only, "-o", tmp_path / "v.lock")
    assert plan.returncode == 1, plan.stderr
    assert "would reject 1 image(s): charts.example.com/team/app:1.0.0" in plan.stderr
    assert not (tmp_path / "v.lock").exists()
    out = tmp_path / "v.airbundle"
    export = cli("export", spec, "-o", out, "--key", signing_key.private, "--policy", images_only)
    assert export.returncode == 1 and "charts.example.com/team/app:1.0.0" in export.stderr
    assert not out.exists()
