"""Platform subsets that keep pinned digests: the source's index travels as it
is, beside a subset index of the chosen platforms (docs/bundle-format.md,
"Platform subsets and sourceDigest").

At import, the source index is pushed like any manifest. A target that takes
an index whose other platforms are absent (an OCI layout, serve, a registry
that accepts sparse indexes) gets the tag on it: tag pulls and pins on the
upstream digest resolve there as upstream. A registry that refuses it gets
the tag on the subset index, as before, and the report says which digest
stands for which, for the mirror configuration to rewrite pins.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from airbundle.adapters.images import ImageTarget
from airbundle.errors import TargetError
from airbundle.format.digest import Digest
from airbundle.format.manifest import ImageEntry


class SparseIndexes:
    """The source indexes a bundle carries, and which the target refused."""

    def __init__(self, images: tuple[ImageEntry, ...]) -> None:
        self.images = {
            i.source_digest: i for i in images if i.carries_source_index and i.source_digest
        }
        self.refused: dict[Digest, str] = {}
        self._lock = threading.Lock()

    def expected(self) -> dict[Digest, str]:
        """Source index digest -> media type, to read from the stream."""
        return {d: i.source_media_type or "" for d, i in self.images.items()}

    def put(
        self, target: ImageTarget, repo: str, digest: Digest, media_type: str, data: bytes
    ) -> None:
        """Push a manifest; a source index the target refuses is noted, not
        raised: the subset index stands in for it."""
        if digest not in self.images:
            target.put_manifest(repo, digest, media_type, data)
            return
        try:
            target.put_manifest(repo, digest, media_type, data)
        except TargetError as exc:
            if exc.status is None or exc.status >= 500:
                raise  # not a refusal of what was sent
            with self._lock:
                self.refused[digest] = exc.message

    def tag(
        self, target: ImageTarget, image: ImageEntry, documents: Mapping[Digest, bytes]
    ) -> tuple[str, Digest]:
        """Tag the source index where the target took it, else the subset
        index; where it landed and the digest the tag names."""
        repo = target.locate(image.ref)
        source = image.source_digest
        if image.carries_source_index and source is not None and source not in self.refused:
            assert image.source_media_type is not None
            where = target.tag(repo, image.ref, image.source_media_type, documents[source])
            return where, source
        where = target.tag(repo, image.ref, image.media_type, documents[image.digest])
        return where, image.digest

    def report(self, image: ImageEntry, tagged: Digest) -> dict[str, str]:
        """The report's fields for a subset image: both digests, and which the
        tag names (`sparse` "true": the upstream index)."""
        if image.source_digest is None:
            return {}
        return {
            "sourceDigest": str(image.source_digest),
            "subsetDigest": str(image.digest),
            "sparse": "true" if tagged == image.source_digest else "false",
        }

    def notes(self, target: ImageTarget) -> list[str]:
        out = []
        for source, image in sorted(self.images.items(), key=lambda kv: str(kv[1].ref)):
            reason = self.refused.get(source)
            if reason is None:
                continue
            out.append(
                f"{target.describe()} refused the upstream index {source} of {image.ref} "
                f"with only {', '.join(image.platforms)} carried (a sparse index: {reason}); "
                f"the tag names the subset index {image.digest} instead, and references "
                f"pinned to {source} do not resolve there (the mirror configuration's "
                f"kustomize list rewrites them to {image.digest})"
            )
        return out
