"""OCI layouts written the way ``airbundle import`` writes them: blobs and manifests
through the product's ``OciLayoutTarget``, index.json last."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.adapters.oci_layout import OciLayoutTarget
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_MANIFEST
from airbundle.format.reference import ImageReference


@dataclass(frozen=True)
class Doc:
    digest: str
    size: int
    data: bytes
    media_type: str


def blob_of(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


class LayoutWriter:
    """Writes blobs, manifests and tags through the product's OciLayoutTarget,
    exactly as import does: blobs and manifests first, index.json last."""

    def __init__(self, root: Path) -> None:
        self.target = OciLayoutTarget(root)
        self.target.prepare()

    def blob(self, data: bytes) -> dict[str, Any]:
        digest, size = blob_of(data)
        self.target.write_blob(Digest.parse(digest), size, [data])
        return {"digest": digest, "size": size}

    def manifest(self, doc: dict[str, Any], media_type: str = OCI_MANIFEST) -> Doc:
        data = json.dumps(doc, separators=(",", ":")).encode()
        digest, size = blob_of(data)
        self.target.put_manifest("", Digest.parse(digest), media_type, data)
        return Doc(digest, size, data, media_type)

    def image(self, config: bytes, layers: Sequence[bytes], **extra: Any) -> Doc:
        c = self.blob(config)
        ls = [self.blob(layer) for layer in layers]
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer} for layer in ls
            ],
            **extra,
        }
        return self.manifest(doc)

    def tag(self, ref: str, doc: Doc) -> None:
        parsed = ImageReference.parse(ref)
        self.target.tag(self.target.locate(parsed), parsed, doc.media_type, doc.data)

    def finish(self) -> None:
        with self.target.locked():
            self.target.finish()
