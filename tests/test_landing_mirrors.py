"""Mirror configuration for the cluster side (issue 17): the mirror's TLS as
the import found it, the cluster's trust of it, valid object names for every
bundle name, and kustomize rewrites for every spelling of a carried name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from airbundle.format.mirrorconfig import (
    CarriedImage,
    MirrorTrust,
    entries,
    render_all,
    resource_name,
)
from airbundle.format.reference import ImageReference, spellings
from support.env import AIRBUNDLE, REPO_ROOT
from support.kustomize import rewrite

CRD_DIR = REPO_ROOT / "tests" / "data" / "openshift-crds"
IMAGE_CRD = CRD_DIR / "0000_10_config-operator_01_images.crd.yaml"
# Kubernetes' own rules (apimachinery validation): an object name is a
# DNS-1123 subdomain; a ConfigMap key is [-._a-zA-Z0-9]+.
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# The bundle names the spec accepts (schemas/bundle-spec.schema.json).
BUNDLE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

MIRROR = "mirror.local:5000"
IMAGES = [
    CarriedImage(ImageReference.parse("nginx:1.25"), MIRROR, "m/library/nginx"),
    CarriedImage(ImageReference.parse("bitnami/redis:7"), MIRROR, "m/bitnami/redis"),
    CarriedImage(ImageReference.parse("quay.io/org/api:2"), MIRROR, "m/org/api"),
]
# Every way a manifest may name the carried images.
SPELLINGS = {
    "nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "library/nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "docker.io/nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "docker.io/library/nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "index.docker.io/library/nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "index.docker.io/nginx:1.25": "mirror.local:5000/m/library/nginx:1.25",
    "nginx": "mirror.local:5000/m/library/nginx",
    f"nginx@sha256:{'a' * 64}": f"mirror.local:5000/m/library/nginx@sha256:{'a' * 64}",
    f"docker.io/nginx:1.25@sha256:{'a' * 64}": (
        f"mirror.local:5000/m/library/nginx:1.25@sha256:{'a' * 64}"
    ),
    "bitnami/redis:7": "mirror.local:5000/m/bitnami/redis:7",
    "docker.io/bitnami/redis:7": "mirror.local:5000/m/bitnami/redis:7",
    "index.docker.io/bitnami/redis:7": "mirror.local:5000/m/bitnami/redis:7",
    "quay.io/org/api:2": "mirror.local:5000/m/org/api:2",
    # Not carried: left alone.
    "nginxfoo:1": "nginxfoo:1",
    "quay.io/org/api2:1": "quay.io/org/api2:1",
}


def _kustomize_entries(files: dict[str, str]) -> list[dict[str, str]]:
    return list(yaml.safe_load(files["kustomize/images.yaml"])["images"])


def test_kustomize_images_rewrite_every_spelling_of_a_carried_name() -> None:
    files = render_all(entries(IMAGES), bundle="b")
    images = _kustomize_entries(files)
    for written, expected in SPELLINGS.items():
        assert rewrite(images, written) == expected, written


def test_scope_registry_still_gives_kustomize_every_repository(tmp_path: Path) -> None:
    from airbundle.ops.mirrors import write_mirror_config

    write_mirror_config(tmp_path, "b", IMAGES, scope="registry")
    images = yaml.safe_load((tmp_path / "kustomize/images.yaml").read_text())["images"]
    assert images, "--scope registry wrote an empty kustomize image list"
    for written, expected in SPELLINGS.items():
        assert rewrite(images, written) == expected, written
    # The registry-wide files did collapse.
    conf = tomllib.loads((tmp_path / "registries.conf").read_text())
    assert {r["prefix"] for r in conf["registry"]} == {"docker.io", "quay.io"}


def test_spellings_are_exactly_the_names_that_parse_back() -> None:
    assert set(spellings("docker.io/library/nginx")) == {
        "nginx",
        "library/nginx",
        "docker.io/nginx",
        "docker.io/library/nginx",
        "index.docker.io/nginx",
        "index.docker.io/library/nginx",
    }
    # "a/b" would be namespace "a": library/a/b has no short form.
    assert "a/b" not in spellings("docker.io/library/a/b")
    assert spellings("quay.io/org/api") == ("quay.io/org/api",)
    for name in ("docker.io/library/nginx", "docker.io/bitnami/redis", "docker.io/library/a/b"):
        for text in spellings(name):
            assert ImageReference.parse(text + ":1").name == name


@settings(max_examples=300, deadline=None)
@given(st.from_regex(BUNDLE_NAME, fullmatch=True))
def test_every_bundle_name_gives_valid_object_names(bundle: str) -> None:
    for suffix in ("", "ca"):
        name = resource_name(bundle, suffix)
        assert DNS1123_SUBDOMAIN.fullmatch(name), (bundle, name)
        assert len(name) <= 253
        assert all(len(label) <= 63 for label in name.split("."))


def test_names_that_were_invalid_are_valid_now() -> None:
    assert resource_name("rel..1") == "airbundle-rel.1"
    assert resource_name("a.-b") == "airbundle-a.b"
    assert resource_name("Weekly_42") == "airbundle-weekly-42"
    files = render_all(entries(IMAGES), bundle="rel..1")
    doc = yaml.safe_load(files["openshift/imagedigestmirrorset.yaml"])
    assert DNS1123_SUBDOMAIN.fullmatch(doc["metadata"]["name"])


def _image_config_schema() -> dict[str, Any]:
    crd = yaml.safe_load(IMAGE_CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _validate_image_config(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(text)
    assert doc["apiVersion"] == "config.openshift.io/v1" and doc["kind"] == "Image"
    assert doc["metadata"]["name"] == "cluster"  # the one object the cluster reads
    errors = sorted(Draft7Validator(_image_config_schema()).iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]
    return doc


def test_https_mirror_imported_insecurely_is_insecure_in_every_file() -> None:
    trust = MirrorTrust("https", verify=False)
    files = render_all(entries(IMAGES), bundle="w", trust=trust)
    conf = tomllib.loads(files["registries.conf"])
    assert all(r["mirror"][0]["insecure"] is True for r in conf["registry"])
    hosts = tomllib.loads(files["containerd/certs.d/docker.io/hosts.toml"])
    (url,) = hosts["host"]
    assert url.startswith("https://")  # still TLS, just not checked
    assert hosts["host"][url]["skip_verify"] is True
    doc = _validate_image_config(files["openshift/image-config-cluster.yaml"])
    assert doc["spec"]["registrySources"]["insecureRegistries"] == [MIRROR]
    assert not any(name.endswith("ca.crt") for name in files)


def test_plain_http_mirror_uses_http_urls_and_is_listed_insecure() -> None:
    files = render_all(entries(IMAGES), bundle="w", trust=MirrorTrust.plain_http())
    hosts = tomllib.loads(files["containerd/certs.d/quay.io/hosts.toml"])
    (url,) = hosts["host"]
    assert url == "http://mirror.local:5000/v2/m"
    assert "skip_verify" not in hosts["host"][url]
    doc = _validate_image_config(files["openshift/image-config-cluster.yaml"])
    assert doc["spec"]["registrySources"]["insecureRegistries"] == [MIRROR]


def test_private_ca_reaches_containerd_containers_and_openshift() -> None:
    trust = MirrorTrust("https", ca_pem=CA_PEM)
    files = render_all(entries(IMAGES), bundle="Weekly.42", trust=trust)
    conf = tomllib.loads(files["registries.conf"])
    assert all(r["mirror"][0]["insecure"] is False for r in conf["registry"])
    for upstream in ("docker.io", "quay.io"):
        hosts = tomllib.loads(files[f"containerd/certs.d/{upstream}/hosts.toml"])
        (url,) = hosts["host"]
        assert hosts["host"][url]["ca"] == "ca.crt"
        assert "skip_verify" not in hosts["host"][url]
        assert files[f"containerd/certs.d/{upstream}/ca.crt"] == CA_PEM
    assert files[f"containers/certs.d/{MIRROR}/ca.crt"] == CA_PEM
    image = _validate_image_config(files["openshift/image-config-cluster.yaml"])
    configmap = yaml.safe_load(files["openshift/additionaltrustedca-configmap.yaml"])
    assert configmap["kind"] == "ConfigMap" and configmap["apiVersion"] == "v1"
    assert configmap["metadata"]["namespace"] == "openshift-config"
    assert image["spec"]["additionalTrustedCA"]["name"] == configmap["metadata"]["name"]
    assert DNS1123_SUBDOMAIN.fullmatch(configmap["metadata"]["name"])
    # OpenShift's key for host:port is host..port.
    assert configmap["data"] == {"mirror.local..5000": CA_PEM}
    assert all(CONFIGMAP_KEY.fullmatch(k) for k in configmap["data"])


def test_a_mirror_the_system_trusts_needs_no_cluster_side() -> None:
    files = render_all(entries(IMAGES), bundle="w", trust=MirrorTrust())
    assert not any("image-config" in n or ("certs.d" in n and n.endswith(".crt")) for n in files)


def test_mirror_config_cli_takes_a_ca_file_and_refuses_one_that_is_not_pem(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "bundle_name": "w",
                "images": [
                    {"source": "nginx:1.25", "target": f"{MIRROR}/m/library/nginx:1.25"},
                ],
            }
        )
    )
    ca = tmp_path / "ca.pem"
    ca.write_text(CA_PEM)
    out = tmp_path / "out"
    run = [*AIRBUNDLE, "mirror-config", str(report), "-o", str(out), "-q"]
    proc = subprocess.run([*run, "--ca-file", str(ca)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    hosts = tomllib.loads((out / "containerd/certs.d/docker.io/hosts.toml").read_text())
    assert next(iter(hosts["host"].values()))["ca"] == "ca.crt"
    assert (out / f"containers/certs.d/{MIRROR}/ca.crt").read_text() == CA_PEM
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    proc = subprocess.run([*run, "--ca-file", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"CA file {bad}: no PEM certificate" in proc.stderr
    proc = subprocess.run(
        [*run, "--ca-file", str(ca), "--insecure"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_mirror_config_from_a_report_follows_the_trust_the_import_recorded(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(CA_PEM)
    report = tmp_path / "report.json"
    doc = {
        "bundle_name": "w",
        "images": [{"source": "quay.io/org/api:2", "target": f"{MIRROR}/m/org/api:2"}],
        "mirror": {"scheme": "https", "verify": False},
    }
    report.write_text(json.dumps(doc))
    out = tmp_path / "insecure"
    subprocess.run([*AIRBUNDLE, "mirror-config", str(report), "-o", str(out), "-q"], check=True)
    conf = tomllib.loads((out / "registries.conf").read_text())
    assert conf["registry"][0]["mirror"][0]["insecure"] is True
    doc["mirror"] = {"scheme": "https", "verify": True, "ca_file": str(ca)}
    report.write_text(json.dumps(doc))
    out = tmp_path / "ca"
    subprocess.run([*AIRBUNDLE, "mirror-config", str(report), "-o", str(out), "-q"], check=True)
    assert (out / f"containers/certs.d/{MIRROR}/ca.crt").read_text() == CA_PEM


@pytest.mark.parametrize("bundle", ["rel..1", "a.-b", "x" * 100])
def test_openshift_trust_files_validate_for_awkward_bundle_names(bundle: str) -> None:
    files = render_all(entries(IMAGES), bundle=bundle, trust=MirrorTrust("https", ca_pem=CA_PEM))
    image = _validate_image_config(files["openshift/image-config-cluster.yaml"])
    assert DNS1123_SUBDOMAIN.fullmatch(image["spec"]["additionalTrustedCA"]["name"])


# --- the real clients against an HTTPS mirror ----------------------------------


def _export_dockerhub_bundle(sample_tree: Path, key: Path, tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: rel..1}\nimages:\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:1.0\n"
        "    name: docker.io/library/hello:1.0\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:0.9\n"
        "    name: quay.io/team/hello:0.9\n"
    )
    bundle = tmp_path / "b.airbundle"
    subprocess.run(
        [*AIRBUNDLE, "export", str(spec), "-o", str(bundle), "--key", str(key), "-q"],
        check=True,
    )
    return bundle


@pytest.mark.parametrize("mode", ["ca-file", "insecure-registry"])
@pytest.mark.integration
def test_skopeo_and_containerd_pull_through_an_https_mirror(
    mode: str, sample_tree: Path, signing_key: Any, tmp_path: Path
) -> None:
    """Imported into an HTTPS registry whose CA (made by openssl) the clients
    do not know: with --ca-file the mirror configuration hands them the CA,
    with --insecure-registry it tells them not to check; skopeo (through
    registries.conf) and containerd (ctr --hosts-dir) pull the original names
    inside a namespace where only the mirror exists. Without what the
    configuration adds, both fail as in the issue."""
    import textwrap

    from support.env import require_tool as need
    from support.netns import netns_mount_run

    for tool in ("skopeo", "containerd", "ctr", "openssl", "unshare"):
        need(tool)
    bundle = _export_dockerhub_bundle(sample_tree, signing_key.private, tmp_path)
    index = json.loads((sample_tree / "layouts/hello/index.json").read_text())
    expected = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    trust = ["--ca-file", "{pki.ca}"]
    if mode == "insecure-registry":
        trust = ["--insecure-registry", "{reg.host}"]
    script = textwrap.dedent(f"""
        import hashlib, json, re, shutil, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from support.openssl_pki import openssl_pki
        from support.registry import OpensslRegistry
        from support.containerd import Containerd
        tmp = Path({str(tmp_path)!r})
        mc = tmp / "mc"
        pki = openssl_pki(tmp / "pki")
        def skopeo(name, *extra):
            proc = subprocess.run(["skopeo", "--registries-conf", str(mc / "registries.conf"),
                                   "inspect", "--raw", *extra, "docker://" + name],
                                  capture_output=True)
            if proc.returncode != 0:
                return proc.stderr.decode()
            return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
        out = {{}}
        with OpensslRegistry(tmp / "mirror", pki) as reg:
            trust = [a.format(pki=pki, reg=reg) for a in {trust!r}]
            subprocess.run([sys.executable, "-m", "airbundle", "import", {str(bundle)!r},
                            "--trust", {str(signing_key.public)!r}, *trust,
                            "--registry", reg.host + "/mirror", "--state-dir", str(tmp / "st"),
                            "--emit-mirror-config", str(mc), "-q"], check=True)
            certs = mc / "containers" / "certs.d" / reg.host
            extra = ["--cert-dir", str(certs)] if certs.exists() else []
            for name in ("docker.io/library/hello:1.0", "quay.io/team/hello:0.9"):
                out["skopeo " + name] = skopeo(name, *extra)
            # Without the CA (or with insecure = false), TLS fails as in the issue.
            conf = (mc / "registries.conf").read_text()
            (mc / "registries.conf").write_text(conf.replace("insecure = true", "insecure = false"))
            out["skopeo without"] = skopeo("quay.io/team/hello:0.9")
            (mc / "registries.conf").write_text(conf)
            hosts = mc / "containerd" / "certs.d"
            bare = tmp / "bare-hosts"
            shutil.copytree(hosts, bare)
            for toml in bare.glob("*/hosts.toml"):
                text = toml.read_text()
                toml.write_text(re.sub(r"\\n  (ca|skip_verify) = .*", "", text))
            with Containerd(tmp / "containerd") as ctd:
                for label, folder in (("ctr", hosts), ("ctr without", bare)):
                    pulled = ctd.ctr("images", "pull", "--hosts-dir", str(folder),
                                     "--snapshotter", "native", "docker.io/library/hello:1.0")
                    out[label] = pulled.returncode == 0 or pulled.stderr
                out["ls"] = ctd.ctr("images", "ls").stdout
        print(json.dumps(out))
    """)
    proc = netns_mount_run([sys.executable, "-c", script], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["skopeo docker.io/library/hello:1.0"] == expected["1.0"]
    assert result["skopeo quay.io/team/hello:0.9"] == expected["0.9"]
    assert "x509" in result["skopeo without"] or "certificate" in result["skopeo without"]
    assert result["ctr"] is True, result["ctr"]
    assert result["ctr without"] is not True and "x509" in result["ctr without"]
    line = next(x for x in result["ls"].splitlines() if x.startswith("docker.io/library/hello"))
    assert expected["1.0"] in line
