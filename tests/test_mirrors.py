"""Mirror configuration: generated from what was carried, judged by a real client
(skopeo with the generated registries.conf, inside a namespace where only the
mirror exists) and by the OpenShift CRDs' own schemas."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from airbundle.format.mirrorconfig import CarriedImage, containerd, entries, render_all
from airbundle.format.reference import ImageReference
from support.env import AIRBUNDLE, REPO_ROOT, require_tool
from support.keys import KeyPair
from support.netns import netns_run

CRD_DIR = REPO_ROOT / "tests" / "data" / "openshift-crds"
CRDS = {
    "ImageDigestMirrorSet": "0000_10_config-operator_01_imagedigestmirrorsets.crd.yaml",
    "ImageTagMirrorSet": "0000_10_config-operator_01_imagetagmirrorsets.crd.yaml",
    "ImageContentSourcePolicy": "0000_10_config-operator_01_imagecontentsourcepolicies.crd.yaml",
}


def carried(*pairs: tuple[str, str]) -> list[CarriedImage]:
    out = []
    for ref, target in pairs:
        t = ImageReference.parse(target)
        out.append(CarriedImage(ImageReference.parse(ref), t.registry, t.repository))
    return out


IMAGES = carried(
    ("nginx:1.25", "mirror.local:5000/m/library/nginx:1.25"),
    ("quay.io/org/tool@sha256:" + "a" * 64, "mirror.local:5000/m/org/tool@sha256:" + "a" * 64),
    ("quay.io/org/api:2", "mirror.local:5000/m/org/api:2"),
)


def test_entries_mark_digest_only_and_tag_mirrors() -> None:
    got = {(e.source, e.mirror, e.tags) for e in entries(IMAGES)}
    assert got == {
        ("docker.io/library/nginx", "mirror.local:5000/m/library/nginx", True),
        ("quay.io/org/tool", "mirror.local:5000/m/org/tool", False),
        ("quay.io/org/api", "mirror.local:5000/m/org/api", True),
    }
    collapsed = {(e.source, e.mirror) for e in entries(IMAGES, scope="registry")}
    assert collapsed == {("docker.io", "mirror.local:5000/m"), ("quay.io", "mirror.local:5000/m")}


def test_files_are_deterministic_and_parse() -> None:
    first = render_all(entries(IMAGES), bundle="Weekly 42", insecure=False)
    second = render_all(entries(list(reversed(IMAGES))), bundle="Weekly 42", insecure=False)
    assert first == second
    conf = tomllib.loads(first["registries.conf"])
    by_prefix = {r["prefix"]: r for r in conf["registry"]}
    assert by_prefix["quay.io/org/tool"]["mirror"][0]["pull-from-mirror"] == "digest-only"
    assert by_prefix["docker.io/library/nginx"]["mirror"][0]["pull-from-mirror"] == "all"
    hosts = tomllib.loads(first["containerd/certs.d/docker.io/hosts.toml"])
    assert hosts["server"] == "https://registry-1.docker.io"
    assert hosts["host"]["https://mirror.local:5000/v2/m"]["capabilities"] == ["pull", "resolve"]
    kustomize = yaml.safe_load(first["kustomize/images.yaml"])["images"]
    assert {"name": "nginx", "newName": "mirror.local:5000/m/library/nginx"} in kustomize
    # The tag mirror set lists only repositories carried by tag.
    itms = yaml.safe_load(first["openshift/imagetagmirrorset.yaml"])
    assert [m["source"] for m in itms["spec"]["imageTagMirrors"]] == [
        "docker.io/library/nginx",
        "quay.io/org/api",
    ]
    assert itms["metadata"]["name"] == "airbundle-weekly-42"


def test_containerd_refuses_mappings_it_cannot_express() -> None:
    from airbundle.errors import UsageError

    odd = carried(("quay.io/a/x:1", "m:5000/p1/a/x:1"), ("quay.io/b/y:1", "m:5000/p2/b/y:1"))
    with pytest.raises(UsageError, match="different prefixes"):
        containerd(entries(odd), insecure=False)


def _validate(doc: dict[str, Any]) -> None:
    crd = yaml.safe_load((CRD_DIR / CRDS[doc["kind"]]).read_text())
    assert doc["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    errors = sorted(Draft7Validator(schema).iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]


def test_openshift_resources_validate_against_the_crds() -> None:
    files = render_all(entries(IMAGES), bundle="weekly", insecure=False)
    kinds = set()
    for name, text in files.items():
        if not name.startswith("openshift/"):
            continue
        doc = yaml.safe_load(text)
        assert yaml.safe_load(yaml.safe_dump(doc)) == doc
        _validate(doc)
        kinds.add(doc["kind"])
    assert kinds == set(CRDS)


def test_the_crd_validation_would_catch_a_broken_resource() -> None:
    doc = yaml.safe_load(
        render_all(entries(IMAGES), bundle="w", insecure=False)[
            "openshift/imagedigestmirrorset.yaml"
        ]
    )
    doc["spec"]["imageDigestMirrors"][0]["mirrorSourcePolicy"] = "Sometimes"
    with pytest.raises(AssertionError):
        _validate(doc)


@pytest.mark.integration
def test_skopeo_resolves_upstream_names_through_the_generated_registries_conf(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    """Inside a namespace where only the mirror exists, `skopeo inspect
    docker://docker.io/library/hello:1.0` gets the mirrored image."""
    require_tool("skopeo")
    require_tool("unshare")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: dockerhub}\nimages:\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:1.0\n"
        "    name: docker.io/library/hello:1.0\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:0.9\n"
        "    name: quay.io/team/hello:0.9\n"
    )
    bundle = tmp_path / "b.airbundle"
    subprocess.run(
        [
            *AIRBUNDLE,
            "export",
            str(spec),
            "-o",
            str(bundle),
            "--key",
            str(signing_key.private),
            "-q",
        ],
        check=True,
    )
    index = json.loads((sample_tree / "layouts/hello/index.json").read_text())
    expected = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    script = textwrap.dedent(f"""
        import json, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from support.registry import Registry
        tmp = Path({str(tmp_path)!r})
        with Registry(tmp / "mirror") as reg:
            subprocess.run([sys.executable, "-m", "airbundle", "import", {str(bundle)!r},
                            "--trust", {str(signing_key.public)!r},
                            "--registry", reg.host + "/mirror", "--state-dir", str(tmp / "st"),
                            "--emit-mirror-config", str(tmp / "mc"), "-q"], check=True)
            out = {{}}
            for name in ("docker.io/library/hello:1.0", "quay.io/team/hello:0.9"):
                raw = subprocess.run(
                    ["skopeo", "--registries-conf", str(tmp / "mc" / "registries.conf"),
                     "inspect", "--raw", "docker://" + name],
                    capture_output=True, check=True).stdout
                import hashlib
                out[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
            # Without the generated file nothing resolves: there is no way out.
            plain = subprocess.run(["skopeo", "inspect", "--raw",
                                    "docker://docker.io/library/hello:1.0"],
                                   capture_output=True)
            out["without"] = plain.returncode
        print(json.dumps(out))
    """)
    proc = netns_run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["docker.io/library/hello:1.0"] == expected["1.0"]
    assert result["quay.io/team/hello:0.9"] == expected["0.9"]
    assert result["without"] != 0
    conf = tomllib.loads((tmp_path / "mc" / "registries.conf").read_text())
    assert all(r["mirror"][0]["insecure"] for r in conf["registry"])


def test_nesting_limits_flatten_paths_and_the_mirror_config_follows() -> None:
    from airbundle.format.mapping import MappingOptions, RegistryLocation, map_images

    refs = [ImageReference.parse("quay.io/org/team/app:1"), ImageReference.parse("nginx:1")]
    mapping = map_images(
        refs, RegistryLocation.parse("harbor.local/proj"), MappingOptions(max_nested_paths=2)
    )
    assert mapping == {refs[0]: "proj/org-team-app", refs[1]: "proj/library-nginx"}
    images = [CarriedImage(r, "harbor.local", repo) for r, repo in mapping.items()]
    files = render_all(entries(images), bundle="b", insecure=False)
    conf = tomllib.loads(files["registries.conf"])
    assert {(r["location"], r["mirror"][0]["location"]) for r in conf["registry"]} == {
        ("quay.io/org/team/app", "harbor.local/proj/org-team-app"),
        ("docker.io/library/nginx", "harbor.local/proj/library-nginx"),
    }


def test_diff_names_updated_images_and_moved_refs(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    import shutil

    work = tmp_path / "w"
    shutil.copytree(sample_tree, work, symlinks=True)
    first = tmp_path / "a.airbundle"
    subprocess.run(
        [
            *AIRBUNDLE,
            "export",
            str(work / "spec.yaml"),
            "-o",
            str(first),
            "--key",
            str(signing_key.private),
            "-q",
            "--no-cache",
        ],
        check=True,
    )
    spec = work / "spec.yaml"
    spec.write_text(spec.read_text().replace("oci:layouts/hello:0.9", "oci:layouts/hello:1.0"))
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(
        ["git", "-C", str(work / "gitops"), "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
        env=env,
    )
    second = tmp_path / "b.airbundle"
    subprocess.run(
        [
            *AIRBUNDLE,
            "export",
            str(spec),
            "-o",
            str(second),
            "--key",
            str(signing_key.private),
            "-q",
            "--no-cache",
        ],
        check=True,
    )
    out = subprocess.run(
        [*AIRBUNDLE, "diff", str(first), str(second)], capture_output=True, text=True, check=True
    ).stdout
    assert "~ image registry.example.com/team/hello:0.9" in out
    assert "~ ref gitops refs/heads/main" in out
    doc = json.loads(
        subprocess.run(
            [*AIRBUNDLE, "diff", str(first), str(second), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert doc["images"]["updated"][0]["ref"] == "registry.example.com/team/hello:0.9"
