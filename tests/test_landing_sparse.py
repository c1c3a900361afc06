"""Platform subsets that keep pinned digests (issue 17): the source index
travels byte for byte beside the subset index; a target that takes a sparse
index (an OCI layout, and serve over it) resolves the upstream digest; a
registry that refuses it gets the subset index, a warning naming both digests,
and mirror configuration that rewrites pins; bundles from before still import."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from airbundle.format.manifest import BLOB_PREFIX, BundleManifest
from airbundle.ops.keys import load_signing_key
from airbundle.ops.scan import carried
from support.crafting import read_parts, write_bundle
from support.env import AIRBUNDLE, hermetic
from support.keys import KeyPair
from support.kustomize import rewrite
from support.net import http_request
from support.registry import Registry
from support.serve import Serve

NAME = "registry.example.com/team/hello:1.0"


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic(monkeypatch, tmp_path / "env")


def _upstream(hello_layout: Path) -> tuple[str, bytes]:
    index = json.loads((hello_layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"][
        "org.opencontainers.image.ref.name"] == "1.0"]  # fmt: skip
    data = (hello_layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]).read_bytes()
    return entry["digest"], data


@pytest.fixture
def subset_bundle(hello_layout: Path, signing_key: KeyPair, tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: subset}\nimages:\n"
        f"  - ref: oci:{hello_layout}:1.0\n    name: {NAME}\n    platforms: [linux/amd64]\n"
    )
    out = tmp_path / "subset.airbundle"
    proc = subprocess.run(
        [*AIRBUNDLE, "export", str(spec), "-o", str(out), "--key", str(signing_key.private)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "travels as it is (sparse)" in proc.stderr
    return out


def _manifest(bundle: Path) -> BundleManifest:
    return BundleManifest.from_bytes(read_parts(bundle).manifest)


def test_a_subset_carries_the_upstream_index_byte_for_byte(
    subset_bundle: Path, hello_layout: Path
) -> None:
    upstream, data = _upstream(hello_layout)
    (image,) = _manifest(subset_bundle).images
    assert str(image.source_digest) == upstream
    assert image.source_media_type == json.loads(data).get(
        "mediaType", "application/vnd.oci.image.index.v1+json"
    )
    assert image.source_size == len(data)
    assert image.platforms == ("linux/amd64",)
    members = dict(read_parts(subset_bundle).members)
    assert members[BLOB_PREFIX + upstream.split(":", 1)[1]] == data
    # The layout in the bundle names the subset index, a complete image.
    layout_index = json.loads(members["images/index.json"])
    assert [m["digest"] for m in layout_index["manifests"]] == [str(image.digest)]
    subset = json.loads(members[BLOB_PREFIX + image.digest.hex])
    assert [m["platform"]["architecture"] for m in subset["manifests"]] == ["amd64"]
    # The arm64 manifest the upstream index names is not carried.
    arm = next(m for m in json.loads(data)["manifests"] if m["platform"]["architecture"] == "arm64")
    assert BLOB_PREFIX + arm["digest"].split(":", 1)[1] not in members


def _import(
    bundle: Path, key: KeyPair, registry: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIRBUNDLE, "import", str(bundle), "--trust", str(key.public), "--registry", registry,
         "--state-dir", str(tmp_path / "state"), "--report", str(tmp_path / "report.json"),
         *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _skopeo_digest(ref: str) -> str:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{ref}"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


@pytest.mark.integration
def test_a_pinned_upstream_digest_resolves_after_a_subset_import_into_a_layout_served(
    subset_bundle: Path, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    upstream, _ = _upstream(hello_layout)
    layout = tmp_path / "images"
    proc = _import(subset_bundle, signing_key, f"oci:{layout}", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr
    entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert entry["digest"] == upstream  # the tag names the upstream index
    assert entry["annotations"]["org.airbundle.index.sparse"] == "true"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"][0]["sparse"] == "true"
    with Serve(["--registry", f"oci:{layout}"], tmp_path / "serve") as server:
        # A GitOps manifest pinned to the upstream index resolves, and so does the tag.
        assert _skopeo_digest(f"{server.host}/team/hello@{upstream}") == upstream
        assert _skopeo_digest(f"{server.host}/team/hello:1.0") == upstream
        # The carried platform pulls whole; the one left behind is absent.
        copied = subprocess.run(
            ["skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy",
             "--src-tls-verify=false", "--src-no-creds", f"docker://{server.host}/team/hello@{upstream}",
             f"oci:{tmp_path / 'pulled'}:x"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        arm = subprocess.run(
            ["skopeo", "--override-os", "linux", "--override-arch", "arm64", "copy",
             "--src-tls-verify=false", "--src-no-creds", f"docker://{server.host}/team/hello@{upstream}",
             f"oci:{tmp_path / 'arm'}:x"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert arm.returncode != 0
        assert "warning" not in server.log_text().lower()


@pytest.mark.integration
def test_a_registry_that_refuses_sparse_indexes_gets_the_subset_and_a_warning(
    subset_bundle: Path, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    upstream, _ = _upstream(hello_layout)
    (image,) = _manifest(subset_bundle).images
    mc = tmp_path / "mc"
    with Registry(tmp_path / "reg") as reg:
        proc = _import(
            subset_bundle, signing_key, f"{reg.host}/mirror", tmp_path,
            "--emit-mirror-config", str(mc),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        warning = next(line for line in proc.stderr.splitlines() if "sparse" in line)
        assert f"refused the upstream index {upstream} of {NAME}" in warning
        assert f"the tag names the subset index {image.digest}" in warning
        assert "MANIFEST_BLOB_UNKNOWN" in warning
        assert _skopeo_digest(f"{reg.host}/mirror/team/hello:1.0") == str(image.digest)
        manifest_url = f"http://{reg.host}/v2/mirror/team/hello/manifests/{upstream}"
        assert http_request(manifest_url).status == 404
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["images"][0]
    assert entry["digest"] == str(image.digest)
    assert entry["sparse"] == "false" and entry["sourceDigest"] == upstream
    # The kustomize list sends pins on the upstream digest to the subset index.
    entries = yaml.safe_load((mc / "kustomize/images.yaml").read_text())["images"]
    mirror = f"{reg.host}/mirror/team/hello"
    assert rewrite(entries, f"{NAME.rsplit(':', 1)[0]}@{upstream}") == f"{mirror}@{image.digest}"
    assert rewrite(entries, f"{NAME}@{upstream}") == f"{mirror}@{image.digest}"
    assert rewrite(entries, NAME) == f"{mirror}:1.0"
    # mirror-config from the report writes the same.
    again = tmp_path / "again"
    subprocess.run(
        [*AIRBUNDLE, "mirror-config", str(tmp_path / "report.json"), "-o", str(again), "-q"],
        check=True,
    )
    assert (again / "kustomize/images.yaml").read_text() == (
        mc / "kustomize/images.yaml"
    ).read_text()


def _old_style(bundle: Path, key: KeyPair, out: Path) -> Path:
    """The bundle as airbundle wrote subsets before: the source digest
    recorded, the source index not carried."""
    parts = read_parts(bundle)
    manifest = BundleManifest.from_bytes(parts.manifest)
    (image,) = manifest.images
    assert image.source_digest is not None
    dropped = BLOB_PREFIX + image.source_digest.hex
    members = [(p, d) for p, d in parts.members if p != dropped]
    old = dataclasses.replace(
        manifest,
        images=(dataclasses.replace(image, source_media_type=None, source_size=None),),
        members=tuple(m for m in manifest.members if m.path != dropped),
    )
    # The writer makes the seek table of these members and signs the manifest.
    private = load_signing_key(key.private, passphrase=None)
    return write_bundle(out, old, [], members, keys=[private])


def test_a_bundle_from_before_still_imports(
    subset_bundle: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    old = _old_style(subset_bundle, signing_key, tmp_path / "old.airbundle")
    (image,) = _manifest(old).images
    assert not image.carries_source_index and image.source_digest is not None
    layout = tmp_path / "images"
    proc = _import(old, signing_key, f"oci:{layout}", tmp_path)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert entry["digest"] == str(image.digest)  # the subset index, as before
    assert "org.airbundle.index.sparse" not in entry.get("annotations", {})


def test_scan_counts_the_upstream_digest_only_where_the_bundle_carries_it(
    subset_bundle: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    new = _manifest(subset_bundle)
    old = _manifest(_old_style(subset_bundle, signing_key, tmp_path / "old.airbundle"))
    (image,) = new.images
    assert str(image.source_digest) in carried(new.images, new.members).digests
    assert str(image.digest) in carried(new.images, new.members).digests
    assert str(image.source_digest) not in carried(old.images, old.members).digests
    assert str(image.digest) in carried(old.images, old.members).digests


def test_the_manifest_schema_wants_all_three_source_fields_together(
    subset_bundle: Path,
) -> None:
    from airbundle.errors import ManifestError

    doc: dict[str, Any] = json.loads(read_parts(subset_bundle).manifest)
    del doc["images"][0]["sourceSize"]
    with pytest.raises(ManifestError, match="sourceSize"):
        BundleManifest.from_bytes(json.dumps(doc).encode())
