"""The OCI distribution-spec conformance suite's pull and content-discovery data,
written as a layout (what ``airbundle serve`` is then asked about)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST
from support.layout_writer import Doc, LayoutWriter

EMPTY_JSON = b"{}"
ARTIFACT_A = "application/vnd.example.sbom.v1"
ARTIFACT_B = "application/vnd.example.signature.v1"
ANNOTATION = "org.opencontainers.conformance.test"


@dataclass(frozen=True)
class Conformance:
    """The distribution-spec conformance suite's pull and discovery data, as a layout."""

    name: str  # repository as served
    tags: list[str]
    config: dict[str, Any]
    layer: dict[str, Any]
    layer_data: bytes
    manifest: Doc
    referrers: dict[str, str]  # digest -> annotation value
    by_type: dict[str, set[str]]  # artifactType -> referrer digests
    orphan: Doc  # refers to a subject that is not in the registry
    missing_subject: str


def conformance_layout(
    root: Path, source_repo: str = "registry.example.com/conformance/test"
) -> Conformance:
    w = LayoutWriter(root)
    layer_data = b"conformance layer " * 1000
    config_data = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    image = w.image(config_data, [layer_data])
    tags = [f"test{i}" for i in range(4)]
    for tag in tags:
        w.tag(f"{source_repo}:{tag}", image)
    empty = w.blob(EMPTY_JSON)
    subject = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image.size}
    referrers: dict[str, str] = {}
    by_type: dict[str, set[str]] = {}

    def refer(doc: Doc, artifact: str, note: str) -> None:
        referrers[doc.digest] = note
        by_type.setdefault(artifact, set()).add(doc.digest)
        w.tag(f"{source_repo}@{doc.digest}", doc)

    for n, artifact in enumerate((ARTIFACT_A, ARTIFACT_B)):
        blob = w.blob(f"referrer blob {n}".encode())
        # config.mediaType carries the artifact type...
        a = w.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": artifact, **empty},
                "layers": [{"mediaType": "application/octet-stream", **blob}],
                "subject": subject,
                "annotations": {ANNOTATION: f"config-{n}"},
            }
        )
        refer(a, artifact, f"config-{n}")
        # ...or artifactType does, with the empty config.
        b = w.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
                "layers": [{"mediaType": "application/octet-stream", **blob}],
                "subject": subject,
                "annotations": {ANNOTATION: f"layer-{n}"},
            }
        )
        refer(b, artifact, f"layer-{n}")
    index = w.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": ARTIFACT_B,
            "manifests": [],
            "subject": subject,
            "annotations": {ANNOTATION: "index"},
        },
        OCI_INDEX,
    )
    refer(index, ARTIFACT_B, "index")
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    orphan = w.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_A,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", **empty}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 12},
            "annotations": {ANNOTATION: "orphan"},
        }
    )
    w.tag(f"{source_repo}@{orphan.digest}", orphan)
    w.finish()
    config = json.loads(image.data)["config"]
    layer = json.loads(image.data)["layers"][0]
    return Conformance(
        "conformance/test",
        tags,
        config,
        layer,
        layer_data,
        image,
        referrers,
        by_type,
        orphan,
        missing,
    )
