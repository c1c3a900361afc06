"""`airbundle probe` and the import that uses it (issue 17): docker-registry
configured each way it can be (default, read-only, deletes off, HTTPS with a
private CA), and a loopback proxy in front of it that refuses what stricter
registries refuse (nested paths, push-to-create, a layer listed twice) or
answers the referrers API docker-registry 2.8 lacks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.env import AIRBUNDLE, hermetic
from support.integration import starts_servers
from support.keys import KeyPair
from support.layout_writer import LayoutWriter
from support.net import http_request
from support.openssl_pki import openssl_pki
from support.registry import ConfiguredRegistry, OpensslRegistry, Registry
from support.strict_proxy import Strictness, StrictProxy

SCRATCH = "mirror/airbundle-probe"


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic(monkeypatch, tmp_path / "env")


def probe(host: str, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [*AIRBUNDLE, "probe", "--registry", f"{host}/mirror", "--json", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def answers(doc: dict[str, Any]) -> dict[str, bool | None]:
    keys = ("pushToCreate", "push", "nestedPaths", "sparseIndex", "referrersApi", "duplicateLayers")
    return {k: doc[k]["accepted"] for k in keys}


def catalog(registry: Registry) -> list[str]:
    repos: list[str] = registry.request("GET", "/v2/_catalog").json()["repositories"] or []
    return repos


@pytest.mark.integration
def test_probe_of_a_default_docker_registry(tmp_path: Path) -> None:
    with Registry(tmp_path / "r") as reg:
        doc = probe(reg.host)
        assert answers(doc) == {
            "pushToCreate": True,
            "push": True,
            "nestedPaths": True,
            "sparseIndex": False,
            "referrersApi": False,
            "duplicateLayers": True,
        }
        assert doc["nestedPaths"]["maxDepth"] is None and doc["nestedPaths"]["tried"] == 8
        assert "MANIFEST_BLOB_UNKNOWN" in doc["sparseIndex"]["detail"]
        assert "tag fallback" in doc["referrersApi"]["detail"]
        assert doc["cleanup"] == []
        # Throw-away: no tag anywhere, the manifests deleted.
        tags = reg.request("GET", f"/v2/{SCRATCH}/tags/list").json()
        assert not tags.get("tags")
        pushed = doc["push"]["detail"].split("@", 1)[1].split()[0]
        assert reg.request("GET", f"/v2/{SCRATCH}/manifests/{pushed}").status == 404
        # The human form says the same.
        text = subprocess.run(
            [*AIRBUNDLE, "probe", "--registry", f"{reg.host}/mirror"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "sparse index (platforms left out): NO" in text
        assert "push into a new repository (push-to-create): yes" in text


@pytest.mark.integration
def test_probe_of_a_read_only_docker_registry(
    hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    readonly = {"storage": {"maintenance": {"readonly": {"enabled": True}}}}
    bundle = _bundle(tmp_path, signing_key, [(f"oci:{hello_layout}:0.9", "quay.io/team/hello:0.9")])
    with ConfiguredRegistry(tmp_path / "r", readonly) as reg:
        doc = probe(reg.host)
        # The import refuses before it writes, with the registry's reason.
        proc = _import(bundle, signing_key, f"{reg.host}/mirror", tmp_path)
    assert proc.returncode == 3
    assert "refuses pushes into 1 repository this import needs: mirror/team/hello" in proc.stderr
    assert "HTTP 405" in proc.stderr  # docker-registry's answer in read-only mode
    assert doc["pushToCreate"]["accepted"] is False
    assert doc["push"]["accepted"] is False
    for key in ("nestedPaths", "sparseIndex", "referrersApi", "duplicateLayers"):
        assert doc[key]["accepted"] is None
        assert doc[key]["detail"].startswith("not asked:")


@pytest.mark.integration
def test_probe_with_deletes_disabled_says_what_stays(tmp_path: Path) -> None:
    with ConfiguredRegistry(tmp_path / "r", {"storage": {"delete": {"enabled": False}}}) as reg:
        doc = probe(reg.host)
    assert answers(doc)["push"] is True and answers(doc)["duplicateLayers"] is True
    (note,) = doc["cleanup"]
    assert "stay (the registry refuses deletes), untagged" in note


@pytest.mark.integration
def test_probe_over_https_with_a_private_ca(tmp_path: Path) -> None:
    pki = openssl_pki(tmp_path / "pki")
    with OpensslRegistry(tmp_path / "r", pki) as reg:
        doc = probe(reg.host, "--ca-file", str(pki.ca))
    assert answers(doc)["push"] is True and answers(doc)["sparseIndex"] is False


@pytest.fixture
@starts_servers
def upstream(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "upstream") as reg:
        yield reg


def test_probe_behind_a_quay_like_proxy(upstream: Registry) -> None:
    rules = Strictness(max_depth=2, refuse_duplicate_layers=True)
    with StrictProxy(upstream, rules) as proxy:
        doc = probe(proxy.host)
    assert doc["nestedPaths"]["accepted"] is False
    assert doc["nestedPaths"]["maxDepth"] == 2
    assert "NAME_INVALID" in doc["nestedPaths"]["detail"]
    assert doc["duplicateLayers"]["accepted"] is False
    assert "MANIFEST_INVALID" in doc["duplicateLayers"]["detail"]
    assert doc["push"]["accepted"] is True


def test_probe_behind_a_proxy_without_push_to_create(upstream: Registry) -> None:
    with StrictProxy(upstream, Strictness(push_to_create=False)) as proxy:
        doc = probe(proxy.host)
        assert doc["pushToCreate"]["accepted"] is False
        assert "NAME_UNKNOWN" in doc["pushToCreate"]["detail"]
        assert doc["push"]["accepted"] is False
        proxy.create(SCRATCH)
        doc = probe(proxy.host)
    assert doc["pushToCreate"]["accepted"] is False
    assert doc["push"]["accepted"] is True  # an existing repository takes pushes


def test_probe_behind_a_proxy_with_the_referrers_api(upstream: Registry) -> None:
    with StrictProxy(upstream, Strictness(referrers_api=True)) as proxy:
        doc = probe(proxy.host)
    assert doc["referrersApi"]["accepted"] is True


# --- import uses what the probe learnt ----------------------------------------


def _bundle(tmp_path: Path, key: KeyPair, images: list[tuple[str, str]], name: str = "b") -> Path:
    spec = tmp_path / f"{name}.yaml"
    lines = "".join(f"  - ref: {ref}\n    name: {carried}\n" for ref, carried in images)
    spec.write_text(
        f"apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {{name: {name}}}\nimages:\n{lines}"
    )
    out = tmp_path / f"{name}.airbundle"
    subprocess.run(
        [*AIRBUNDLE, "export", str(spec), "-o", str(out), "--key", str(key.private), "-q"],
        check=True,
    )
    return out


def _import(
    bundle: Path, key: KeyPair, registry: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIRBUNDLE, "import", str(bundle), "--trust", str(key.public), "--registry", registry,
         "--state-dir", str(tmp_path / "state"), "--report", str(tmp_path / "report.json"),
         *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _raw(host: str, ref: str) -> bytes:
    repo, _, tag = ref.rpartition(":")
    if "@" in ref:
        repo, _, tag = ref.partition("@")
    response = http_request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json, "
                 "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    assert response.status == 200, (ref, response.status, response.body)
    return response.body


def test_import_flattens_paths_a_registry_cannot_nest(
    upstream: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path, signing_key, [(f"oci:{hello_layout}:0.9", "quay.io/team/hello:0.9")])
    with StrictProxy(upstream, Strictness(max_depth=2)) as proxy:
        proc = _import(bundle, signing_key, f"{proxy.host}/mirror", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "takes at most 2 path components" in proc.stderr
        assert f"{proxy.host}/mirror/team-hello:0.9" in proc.stdout
        assert _raw(proxy.host, "mirror/team-hello:0.9")
        refused = list(proxy.rules.refused)
    # Only the preflight's upload sessions at the deep path were refused.
    assert refused == ["POST /v2/mirror/team/hello/blobs/uploads/: NAME_INVALID"], refused
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"][0]["target"] == f"{proxy.host}/mirror/team-hello:0.9"


def test_import_refuses_early_where_repositories_must_be_created_first(
    upstream: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    bundle = _bundle(
        tmp_path,
        signing_key,
        [
            (f"oci:{hello_layout}:0.9", "quay.io/team/hello:0.9"),
            (f"oci:{hello_layout}:1.0", "quay.io/team/web:1.0"),
        ],
    )
    with StrictProxy(upstream, Strictness(push_to_create=False)) as proxy:
        proc = _import(bundle, signing_key, f"{proxy.host}/mirror", tmp_path)
        assert proc.returncode == 3
        assert "refuses pushes into 2 repositories this import needs" in proc.stderr
        assert "mirror/team/hello, mirror/team/web (" in proc.stderr
        assert "NAME_UNKNOWN" in proc.stderr and "create them and re-run" in proc.stderr
        # Nothing was written: no blob, no manifest, no tag.
        assert catalog(upstream) == []
        proxy.create("mirror/team/hello")
        proxy.create("mirror/team/web")
        proc = _import(bundle, signing_key, f"{proxy.host}/mirror", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _raw(proxy.host, "mirror/team/web:1.0")


def test_import_refuses_early_a_manifest_with_a_layer_twice_where_refused(
    upstream: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    doc = writer.image(b'{"architecture":"amd64","os":"linux"}', [b"same layer", b"same layer"])
    writer.tag("example.com/team/signed:1", doc)
    writer.finish()
    bundle = _bundle(
        tmp_path,
        signing_key,
        [(f"oci:{tmp_path / 'layout'}:example.com/team/signed:1", "example.com/team/signed:1")],
    )
    with StrictProxy(upstream, Strictness(refuse_duplicate_layers=True)) as proxy:
        proc = _import(bundle, signing_key, f"{proxy.host}/mirror", tmp_path)
    assert proc.returncode == 3
    assert "refuses manifests that list a layer twice, and the bundle has 1:" in proc.stderr
    assert f"mirror/team/signed@{doc.digest}" in proc.stderr
    # Refused before the first blob: only the probe's scratch repository exists.
    assert all(repo.startswith("mirror/airbundle-probe") for repo in catalog(upstream))
    # The same bundle into docker-registry as it is (it takes them) lands whole.
    proc = _import(bundle, signing_key, f"{upstream.host}/mirror", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _raw(upstream.host, "mirror/team/signed:1") == doc.data


def _signed_source(source: StrictProxy, layout: Path) -> tuple[str, str, str]:
    """An image and an SBOM referring to it, pushed through a proxy that has the
    referrers API (so the export finds the SBOM by the API, with no tag)."""
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-no-creds",
         f"oci:{layout}:0.9", f"docker://{source.host}/team/hello:0.9"],
        check=True, capture_output=True,
    )  # fmt: skip
    subject = _raw(source.host, "team/hello:0.9")
    from airbundle.adapters.registry.client import RegistryClient
    from airbundle.adapters.registry.transport import Transport
    from airbundle.errors import TargetError
    from airbundle.format.digest import Digest

    client = RegistryClient(source.host, Transport(), error=TargetError)
    empty = b"{}"
    client.upload_blob("team/hello", Digest.sha256_of(empty), 2, [empty])
    sbom = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/spdx+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": str(Digest.sha256_of(empty)), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json",
                        "digest": str(Digest.sha256_of(empty)), "size": 2}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": str(Digest.sha256_of(subject)), "size": len(subject)},
        },
        separators=(",", ":"),
    ).encode()  # fmt: skip
    digest = Digest.sha256_of(sbom)
    client.put_manifest(
        "team/hello", str(digest), "application/vnd.oci.image.manifest.v1+json", sbom
    )
    return str(Digest.sha256_of(subject)), str(digest), f"{source.host}/team/hello:0.9"


@pytest.mark.parametrize("target_has_api", [False, True])
@pytest.mark.integration
def test_referrers_found_by_the_api_stay_findable_after_import(
    target_has_api: bool, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    with (
        Registry(tmp_path / "src") as src_reg,
        StrictProxy(src_reg, Strictness(referrers_api=True)) as source,
        Registry(tmp_path / "dst") as dst_reg,
        StrictProxy(dst_reg, Strictness(referrers_api=target_has_api)) as target,
    ):
        subject, sbom, ref = _signed_source(source, hello_layout)
        spec = tmp_path / "r.yaml"
        spec.write_text(
            "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: r}\n"
            f"images:\n  - ref: {ref}\n    referrers: true\n"
        )
        bundle = tmp_path / "r.airbundle"
        subprocess.run(
            [*AIRBUNDLE, "export", str(spec), "-o", str(bundle), "--key",
             str(signing_key.private), "-q"],
            check=True,
        )  # fmt: skip
        proc = _import(bundle, signing_key, f"{target.host}/mirror", tmp_path)
        assert proc.returncode == 0, proc.stderr
        fallback_tag = "sha256-" + subject.split(":", 1)[1]
        listed = http_request(f"http://{dst_reg.host}/v2/mirror/team/hello/tags/list").json()
        if target_has_api:
            # The target lists it itself: no fallback tag was made.
            assert fallback_tag not in (listed.get("tags") or [])
            index = http_request(
                f"http://{target.host}/v2/mirror/team/hello/referrers/{subject}"
            ).json()
        else:
            assert "has no referrers API: 1 subject(s)" in proc.stderr
            index = json.loads(_raw(target.host, f"mirror/team/hello:{fallback_tag}"))
        (entry,) = index["manifests"]
        assert entry["digest"] == sbom and entry["artifactType"] == "application/spdx+json"
