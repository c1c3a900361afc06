"""OCI artifacts that are not images (an artifactType, a config of any media
type, with or without layers: a policy bundle, a WASM module) travel under
`images:` byte for byte, with the artifacts that refer to them."""

from __future__ import annotations

import json
from pathlib import Path

from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import TargetError
from airbundle.format.digest import Digest
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.importer import ImportOptions, import_bundle
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy
from support.charts import registry_blob, sha256
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import skopeo_raw_manifest

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def push(
    client: RegistryClient, repo: str, tag: str, doc: dict[str, object], blobs: list[bytes]
) -> bytes:
    for blob in blobs:
        client.upload_blob(repo, Digest.sha256_of(blob), len(blob), [blob])
    data = json.dumps(doc, separators=(",", ":")).encode()
    client.put_manifest(repo, tag, MANIFEST, data)
    return data


def test_artifacts_that_are_not_images_travel_byte_for_byte_with_their_referrers(
    registry: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    client = RegistryClient(registry.host, Transport(), error=TargetError)
    empty = b"{}"
    # A policy bundle: an artifactType, the empty config, no layers at all.
    policy = push(
        client,
        "artifacts/policy",
        "1",
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/vnd.example.policy.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(empty),
                "size": 2,
            },
            "layers": [],
            "annotations": {"org.example.note": "no layers"},
        },
        [empty],
    )
    # A WASM module: its own config and layer media types.
    config, module = b'{"architecture":"wasm"}', b"\x00asm\x01\x00\x00\x00"
    wasm = push(
        client,
        "artifacts/wasm",
        "1",
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.wasm.config.v0+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.wasm.content.layer.v1+wasm",
                    "digest": sha256(module),
                    "size": len(module),
                }
            ],
        },
        [config, module],
    )
    # A signature referring to the module, found through the fallback tag.
    signature = b"signed"
    sig = push(
        client,
        "artifacts/wasm",
        "signature",
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/vnd.example.signature.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(empty),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": sha256(signature),
                    "size": len(signature),
                }
            ],
            "subject": {"mediaType": MANIFEST, "digest": sha256(wasm), "size": len(wasm)},
        },
        [empty, signature],
    )
    fallback = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [{"mediaType": MANIFEST, "digest": sha256(sig), "size": len(sig)}],
        },
        separators=(",", ":"),
    ).encode()
    client.put_manifest("artifacts/wasm", "sha256-" + sha256(wasm).split(":")[1], INDEX, fallback)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: a}\nimages:\n"
        f"  - ref: {registry.host}/artifacts/policy:1\n"
        f"  - ref: {registry.host}/artifacts/wasm:1\n    referrers: true\n"
    )
    keys = (load_signing_key(signing_key.private, passphrase=None),)
    result = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "a.airbundle", keys=keys)
    )
    import_bundle(
        result.path,
        ImportOptions(
            policy=load_policy(load_trust([signing_key.public]), 1),
            registry=f"{target_registry.host}/m",
            state_dir=tmp_path / "state",
        ),
    )
    assert skopeo_raw_manifest(target_registry, "m/artifacts/policy:1") == policy
    assert skopeo_raw_manifest(target_registry, "m/artifacts/wasm:1") == wasm
    assert skopeo_raw_manifest(target_registry, f"m/artifacts/wasm@{sha256(sig)}") == sig
    assert registry_blob(target_registry, "m/artifacts/wasm", sha256(module)) == module
    assert registry_blob(target_registry, "m/artifacts/wasm", sha256(signature)) == signature
