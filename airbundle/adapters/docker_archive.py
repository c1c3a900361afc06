"""`docker save` / `podman save` archives as an image source.

A docker archive holds a config and uncompressed layer tars but no registry
manifest, so we write an OCI manifest for it. Its layer digests are the
config's diff_ids (the layers are uncompressed), so no extra pass over the
layers is needed: the export stream checks each layer against its diff_id.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from airbundle.adapters.fsutil import open_regular
from airbundle.adapters.images import ResolvedImage
from airbundle.errors import FormatError, SourceError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Descriptor
from airbundle.limits import DEFAULT_LIMITS, Limits


class DockerArchiveSource:
    def __init__(self, path: Path, ref: str | None, *, text: str, limits: Limits = DEFAULT_LIMITS):
        self.path = path
        self.ref = ref
        self.text = text
        self.limits = limits
        self._manifest: bytes | None = None
        self._members: dict[Digest, str] = {}
        self._config: bytes | None = None

    def describe(self) -> str:
        return self.text

    def _open(self) -> tarfile.TarFile:
        # A regular file: tarfile would wait forever on a FIFO.
        open_regular(self.path, limit=None, what=f"{self.text}: archive", error=SourceError).close()
        try:
            return tarfile.open(self.path, "r:")
        except (OSError, tarfile.TarError) as exc:
            raise SourceError(
                f"{self.text}: cannot open {self.path} as a tar archive: {exc}"
            ) from None

    def _read_member(self, tar: tarfile.TarFile, name: str, limit: int) -> bytes:
        try:
            info = tar.getmember(name)
        except KeyError:
            raise SourceError(f"{self.text}: {self.path} has no member {name!r}") from None
        if not info.isfile() or info.size > limit:
            raise SourceError(
                f"{self.text}: member {name!r} is not a regular file of at most {limit} bytes"
            )
        fh = tar.extractfile(info)
        assert fh is not None
        return fh.read()

    def resolve(self) -> ResolvedImage:
        limit = self.limits.max_oci_manifest_bytes
        with self._open() as tar:
            doc = loads_strict(
                self._read_member(tar, "manifest.json", limit),
                what=f"{self.text}: manifest.json",
                max_bytes=limit,
                max_depth=self.limits.max_json_depth,
                error=SourceError,
            )
            if not isinstance(doc, list) or not doc:
                raise SourceError(f"{self.text}: manifest.json lists no images")
            schemas.check(
                schemas.DOCKER_ARCHIVE_MANIFEST,
                doc,
                what=f"{self.text}: manifest.json",
                error=SourceError,
            )
            if self.ref is None:
                if len(doc) != 1:
                    raise SourceError(
                        f"{self.text}: the archive holds {len(doc)} images; "
                        "name one as docker-archive:PATH:REF"
                    )
                entry = doc[0]
            else:
                found = [e for e in doc if self.ref in (e.get("RepoTags") or [])]
                if not found:
                    raise SourceError(f"{self.text}: no image tagged {self.ref!r} in {self.path}")
                entry = found[0]
            config_name = entry.get("Config")
            layers = entry.get("Layers")
            if not isinstance(config_name, str) or not isinstance(layers, list):
                raise SourceError(f"{self.text}: manifest.json entry lacks Config or Layers")
            config = self._read_member(tar, config_name, limit)
            cfg = loads_strict(
                config,
                what=f"{self.text}: {config_name}",
                max_bytes=limit,
                max_depth=self.limits.max_json_depth,
                error=SourceError,
            )
            rootfs = cfg.get("rootfs") if isinstance(cfg, dict) else None
            diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
                raise SourceError(
                    f"{self.text}: config's rootfs.diff_ids do not match the {len(layers)} layers"
                )
            layer_descs = []
            for name, diff_id in zip(layers, diff_ids, strict=True):
                try:
                    digest = Digest.parse(str(diff_id))
                    info = tar.getmember(str(name))
                except (KeyError, FormatError) as exc:
                    raise SourceError(f"{self.text}: layer {name!r}: {exc}") from None
                self._members[digest] = str(name)
                layer_descs.append(
                    {"mediaType": OCI_LAYER, "digest": str(digest), "size": info.size}
                )
        config_digest = Digest.sha256_of(config)
        self._config = config
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
            "layers": layer_descs,
        }
        self._manifest = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        tags = entry.get("RepoTags") or []
        recorded = self.ref or (tags[0] if tags else None)
        desc = Descriptor(OCI_MANIFEST, Digest.sha256_of(self._manifest), len(self._manifest))
        return ResolvedImage(desc, recorded)

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        if self._manifest is None or Digest.sha256_of(self._manifest) != descriptor.digest:
            raise SourceError(f"{self.text}: unknown manifest {descriptor.digest}")
        return self._manifest

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        if self._config is not None and descriptor.digest == Digest.sha256_of(self._config):
            return iter([self._config])
        name = self._members.get(descriptor.digest)
        if name is None:
            raise SourceError(f"{self.text}: no layer with digest {descriptor.digest}")

        def chunks() -> Iterator[bytes]:
            with self._open() as tar:
                fh = tar.extractfile(name)
                assert fh is not None
                while chunk := fh.read(self.limits.io_chunk_bytes):
                    yield chunk

        return chunks()
