"""OCI content for the tests: media types, and image layouts written from scratch
(one seeded random layer of any size) or read back (which layers an image has)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from support.bundles import sha256

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# What a client accepts when it asks a registry for a manifest by tag.
ACCEPT = ", ".join(
    [
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
REF_NAME = "org.opencontainers.image.ref.name"


def write_layout(root: Path, ref: str, layer_size: int, seed: int) -> Path:
    """An OCI layout holding one linux/amd64 image (ref name ``ref``) whose single
    uncompressed layer is ``layer_size`` seeded random bytes."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer = random.Random(seed).randbytes(layer_size)  # noqa: S311 (test data)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": put(config, OCI_CONFIG),
            "layers": [put(layer, OCI_LAYER)],
        },
        sort_keys=True,
    ).encode()
    top = put(manifest, OCI_MANIFEST)
    top["annotations"] = {REF_NAME: ref}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    return root


def layout_layers(root: Path, ref: str) -> dict[str, int]:
    """digest -> size of every layer of image ``ref`` in an OCI layout (all platforms)."""

    def load(digest: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((root / "blobs" / "sha256" / digest[7:]).read_bytes())
        return doc

    (top,) = [
        m
        for m in json.loads((root / "index.json").read_text())["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == ref
    ]
    doc = load(top["digest"])
    manifests = [load(m["digest"]) for m in doc["manifests"]] if "manifests" in doc else [doc]
    return {layer["digest"]: layer["size"] for m in manifests for layer in m["layers"]}
