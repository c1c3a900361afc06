"""Import with several blob uploads in flight (ops/sections.py), against a real
registry behind the fault proxy: the uploads overlap, one failing upload fails
the import without a tag (and a re-run keeps what the others stored), a
damaged layer is never committed, a volume set is read in place."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airbundle.adapters.registry.client import RegistryClient
from airbundle.errors import MemberDigestError, TargetError
from airbundle.ops.access import open_bundle_access
from airbundle.ops.export import ExportResult
from airbundle.ops.importer import ImportOptions, ImportReport, import_bundle
from airbundle.ops.keys import load_trust
from airbundle.ops.verify import load_policy
from airbundle.ops.volumes import split_bundle
from support.bundles import export, sha256, write_spec
from support.bundles import fast_transport as fast
from support.env import hermetic_env
from support.fault_proxy import FaultProxy, Respond
from support.judges import recorded, registry_state, tags
from support.keys import KeyPair
from support.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from support.registry import Registry
from support.skopeo import push_oci_layout

# Three layers streamed in a PATCH each (larger than the upload buffer), one
# small one uploaded whole.
# The client holds this much of an upload for a resend: layers larger than it.
BUFFER: int = inspect.signature(RegistryClient).parameters["buffer_bytes"].default
LAYERS = (BUFFER + (3 << 20), BUFFER + (2 << 20), BUFFER + (1 << 20), 300_000)
REPO, TAG = "team/layers", "1.0"
MIRRORED = f"mirror/{REPO}"


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in hermetic_env(tmp_path / "env").items():
        monkeypatch.setenv(var, value)
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


def write_layout(root: Path) -> tuple[Path, list[str]]:
    """One image of LAYERS random layers; the layers' digests, in order."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    rng = random.Random(14)  # noqa: S311 (test data)
    # Behind a gzip magic, as compressed layers are: stored in raw frames.
    layers = [put(b"\x1f\x8b" + rng.randbytes(size - 2), OCI_LAYER) for size in LAYERS]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put(json.dumps(config).encode(), OCI_CONFIG),
        "layers": layers,
    }
    top = put(json.dumps(manifest).encode(), OCI_MANIFEST)
    top["annotations"] = {"org.opencontainers.image.ref.name": TAG}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}
    (root / "index.json").write_text(json.dumps(index))
    return root, [layer["digest"] for layer in layers]


@pytest.fixture(scope="module")
def layers_bundle(
    tmp_path_factory: pytest.TempPathFactory, signing_key: KeyPair
) -> Iterator[tuple[ExportResult, list[str]]]:
    folder = tmp_path_factory.mktemp("streams")
    layout, digests = write_layout(folder / "layout")
    with Registry(folder / "source") as source:
        push_oci_layout(source, layout, TAG, f"{REPO}:{TAG}")
        spec = write_spec(folder / "spec.yaml", f"{source.host}/{REPO}:{TAG}")
        out = folder / "layers.airbundle"
        yield export(spec, out, signing_key, transport=fast(), cache_dir=None), digests


@pytest.fixture
def proxy(target_registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(target_registry.host) as p:
        yield p


def import_(bundle: Path, key: KeyPair, registry: str, state: Path) -> ImportReport:
    policy = load_policy(load_trust([key.public]), 1)
    options = ImportOptions(policy=policy, registry=registry, transport=fast(), state_dir=state)
    return import_bundle(bundle, options)


def blob_present(reg: Registry, digest: str) -> bool:
    return reg.request("HEAD", f"/v2/{MIRRORED}/blobs/{digest}").status == 200


def complete(reg: Registry, digests: list[str]) -> bool:
    return tags(reg, MIRRORED) == [TAG] and all(blob_present(reg, d) for d in digests)


def test_the_layers_of_one_image_are_uploaded_several_at_once(
    proxy: FaultProxy,
    target_registry: Registry,
    layers_bundle: tuple[ExportResult, list[str]],
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    bundle, digests = layers_bundle
    proxy.delay = 0.2  # every answer late: uploads in flight at once show as overlaps
    report = import_(bundle.path, signing_key, f"{proxy.host}/mirror", tmp_path / "state")

    patches = proxy.matching("PATCH", r"/blobs/uploads/")
    assert len(patches) == 3, patches
    overlapping = [
        (a, b)
        for i, a in enumerate(patches)
        for b in patches[i + 1 :]
        if a.started < b.answered and b.started < a.answered
    ]
    assert overlapping, [(p.started, p.answered) for p in patches]
    assert report.blobs_written == len(LAYERS) + 1  # and the config
    assert complete(target_registry, digests)


def test_one_failing_upload_of_several_fails_the_import_without_a_tag_and_a_rerun_resumes(
    proxy: FaultProxy,
    target_registry: Registry,
    layers_bundle: tuple[ExportResult, list[str]],
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    bundle, digests = layers_bundle
    failing = digests[1]
    proxy.add("PUT", rf"digest=sha256%3A{failing[7:]}", Respond(500), times=None)
    state = tmp_path / "state"

    with pytest.raises(TargetError) as caught:
        import_(bundle.path, signing_key, f"{proxy.host}/mirror", state)

    assert failing in caught.value.message, caught.value.message
    assert tags(target_registry, MIRRORED) == []
    assert not blob_present(target_registry, failing)
    assert not recorded(state, str(bundle.manifest_digest))
    proxy.clear()

    report = import_(bundle.path, signing_key, f"{proxy.host}/mirror", state)

    assert report.blobs_written >= 1 and report.blobs_written + report.blobs_present == 5
    assert complete(target_registry, digests)
    assert recorded(state, str(bundle.manifest_digest))


def test_a_damaged_layer_is_never_committed_and_nothing_is_tagged(
    proxy: FaultProxy,
    target_registry: Registry,
    layers_bundle: tuple[ExportResult, list[str]],
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    bundle, digests = layers_bundle
    damaged_digest = digests[0]
    path = f"images/blobs/sha256/{damaged_digest[7:]}"
    with open_bundle_access(bundle.path, load_policy(load_trust([signing_key.public]), 1)) as a:
        spans = a.payload_spans(path)
    assert spans  # stored raw: a flipped byte keeps the frames' sizes and checksums
    data = bytearray(bundle.path.read_bytes())
    data[spans[-1].offset + spans[-1].length - 100] ^= 0x01  # near its end: mid-upload
    damaged = tmp_path / "damaged.airbundle"
    damaged.write_bytes(bytes(data))

    with pytest.raises(MemberDigestError) as caught:
        import_(damaged, signing_key, f"{proxy.host}/mirror", tmp_path / "state")

    assert path in caught.value.message
    assert not blob_present(target_registry, damaged_digest)
    assert not [
        e for e in proxy.matching("PUT", r"/blobs/uploads/") if damaged_digest[7:] in e.target
    ]
    assert tags(target_registry, MIRRORED) == []
    assert not recorded(tmp_path / "state", str(bundle.manifest_digest))


def test_a_volume_set_split_inside_the_layers_is_imported_in_place(
    target_registry: Registry,
    layers_bundle: tuple[ExportResult, list[str]],
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    bundle, digests = layers_bundle
    # Odd-sized volumes: boundaries inside layers and their frames.
    volumes = split_bundle(
        bundle.path, 5_000_003, (load_key(signing_key),), folder=tmp_path / "set"
    )
    before = {p: p.stat().st_size for p in (tmp_path / "set").iterdir()}

    import_(volumes, signing_key, f"{target_registry.host}/mirror", tmp_path / "state")

    assert complete(target_registry, digests)
    assert registry_state(target_registry)[MIRRORED] == {TAG: digests_of_tag(target_registry)}
    # Read in place: no joined copy beside the volumes.
    assert {p: p.stat().st_size for p in (tmp_path / "set").iterdir()} == before


def load_key(key: KeyPair) -> Any:
    from airbundle.ops.keys import load_signing_key

    return load_signing_key(key.private, passphrase=None)


def digests_of_tag(reg: Registry) -> str:
    return registry_state(reg)[MIRRORED][TAG]
