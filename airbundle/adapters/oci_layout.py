"""OCI image layouts on disk, as a source (export) and as a target (import)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from airbundle.adapters.fsutil import (
    atomic_output,
    file_lock,
    open_regular,
    read_regular,
    remove_stale_temps,
    write_atomic,
)
from airbundle.adapters.images import MirrorEntries, ResolvedImage
from airbundle.errors import FormatError, MemberDigestError, SourceError, TargetError, UsageError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.oci import (
    INDEX_TYPES,
    LAYOUT_FILE,
    REF_NAME,
    SPARSE_INDEX,
    Descriptor,
    layout_index,
    parse_manifest,
)
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits


def _read_index(
    root: Path, *, error: type[SourceError] | type[TargetError], limits: Limits
) -> list[Descriptor]:
    path = root / "index.json"
    data = read_regular(
        path, limit=limits.max_oci_manifest_bytes, what="the layout's index", error=error
    )
    doc = loads_strict(
        data,
        what=str(path),
        max_bytes=limits.max_oci_manifest_bytes,
        max_depth=limits.max_json_depth,
        error=error,
    )
    if isinstance(doc, dict):
        schemas.check(schemas.OCI_MANIFEST, doc, what=str(path), error=error)
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list):
        raise error(f"{path}: not an OCI index (no manifests list)")
    try:
        return [Descriptor.from_json(d, f"{path}: manifests[{i}]") for i, d in enumerate(manifests)]
    except FormatError as exc:
        raise error(exc.message) from None


def layout_refs(root: Path, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Descriptor]:
    """The layout's index.json as it is now: ref name -> descriptor."""
    return {
        d.annotations[REF_NAME]: d
        for d in _read_index(root, error=TargetError, limits=limits)
        if REF_NAME in d.annotations
    }


class OciLayoutSource:
    """One image in an OCI layout, selected by its ref name (skopeo's oci:PATH:REF)."""

    def __init__(self, root: Path, ref: str | None, *, text: str, limits: Limits = DEFAULT_LIMITS):
        self.root = root
        self.ref = ref
        self.text = text
        self.limits = limits

    def describe(self) -> str:
        return self.text

    def resolve(self) -> ResolvedImage:
        if not (self.root / "oci-layout").is_file():
            raise SourceError(
                f"{self.text}: {self.root} is not an OCI image layout (no oci-layout file)"
            )
        entries = _read_index(self.root, error=SourceError, limits=self.limits)
        if self.ref is None:
            if len(entries) != 1:
                names = sorted(d.annotations.get(REF_NAME, "?") for d in entries)
                raise SourceError(
                    f"{self.text}: the layout holds {len(entries)} images; "
                    f"name one as oci:PATH:REF (refs: {', '.join(names) or 'none'})"
                )
            chosen = entries[0]
        else:
            matches = [d for d in entries if d.annotations.get(REF_NAME) == self.ref]
            if not matches:
                names = sorted(d.annotations.get(REF_NAME, "?") for d in entries)
                raise SourceError(
                    f"{self.text}: no image with ref name {self.ref!r} in {self.root} "
                    f"(refs: {', '.join(names) or 'none'})"
                )
            if len({d.digest for d in matches}) > 1:
                raise SourceError(f"{self.text}: ref name {self.ref!r} is ambiguous in {self.root}")
            chosen = matches[0]
        return ResolvedImage(chosen, chosen.annotations.get(REF_NAME))

    def _blob_path(self, digest: Digest) -> Path:
        return self.root / digest.blob_path

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > self.limits.max_oci_manifest_bytes:
            raise SourceError(
                f"{self.text}: manifest {descriptor.digest} is too large ({descriptor.size} bytes)"
            )
        path = self._blob_path(descriptor.digest)
        data = read_regular(
            path, limit=descriptor.size, what=f"{self.text}: manifest blob", error=SourceError
        )
        if len(data) != descriptor.size or Digest.sha256_of(data) != descriptor.digest:
            raise SourceError(f"{self.text}: blob {path} does not match its digest or size")
        return data

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        path = self._blob_path(descriptor.digest)
        fh = open_regular(path, limit=descriptor.size, what=f"{self.text}: blob", error=SourceError)

        def chunks() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(self.limits.io_chunk_bytes):
                    yield chunk

        return chunks()


class OciLayoutTarget:
    """Imports land in an OCI layout; each image findable by its full reference."""

    def __init__(self, root: Path, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root = root
        self.limits = limits
        self._blobs = root / "blobs" / "sha256"
        self._pending: list[tuple[str, Descriptor]] = []

    def describe(self) -> str:
        return f"oci:{self.root}"

    def state_key(self) -> str:
        return f"images=oci:{self.root}"

    def state_dir(self) -> Path | None:
        # The state travels with the layout it describes.
        return self.root / ".airbundle"

    def report_folder(self) -> Path | None:
        return self.root

    def assign(
        self, refs: Sequence[ImageReference], *, max_nested_paths: int | None = None
    ) -> None:
        pass  # every image is kept under its full reference

    def preflight(self) -> dict[str, TargetError]:
        return {}

    def referrers_api(self) -> bool | None:
        # serve lists referrers from the manifests' subjects.
        return True

    def accepts_repeated_layers(self) -> bool | None:
        return True

    def index_referrers(self, repo: str, subject: Digest, referrers: Sequence[Descriptor]) -> None:
        pass

    def mirror_host(self) -> str | None:
        return None  # nothing pulls from a layout by host name

    def mirror_entries(self) -> MirrorEntries:
        return MirrorEntries([])

    def list_blobs(self) -> set[Digest]:
        folder = self._blobs
        if not folder.is_dir():
            raise UsageError(f"{self.root} is not an OCI layout (no blobs/sha256)")
        out = set()
        for path in folder.iterdir():
            try:
                out.add(Digest("sha256", path.name))
            except FormatError:
                continue  # temporary files of an interrupted import
        return out

    def prepare(self) -> None:
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                write_atomic(layout, LAYOUT_FILE)
            if not (self.root / "index.json").exists():
                write_atomic(self.root / "index.json", layout_index([]))
        except OSError as exc:
            raise TargetError(f"{self.describe()}: cannot prepare the layout: {exc}") from None
        remove_stale_temps(self._blobs)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise imports into the same layout (index.json is read-modify-write)."""
        return file_lock(self.root / ".airbundle.lock", what="layout lock", error=TargetError)

    def locate(self, ref: ImageReference) -> str:
        return str(ref)

    def published(self, ref: ImageReference) -> Digest | None:
        """index.json's entry under the reference, if its manifest is on disk."""
        desc = layout_refs(self.root, limits=self.limits).get(self.locate(ref))
        if desc is None:
            return None
        blob = self.root / desc.digest.blob_path
        if not blob.is_file() or blob.stat().st_size != desc.size:
            return None
        return desc.digest

    def drain(self) -> None:
        pass  # blobs are written synchronously

    def warm(self, needed: dict[Digest, list[str]]) -> None:
        pass  # a file test is as cheap as a cache

    def has_blob(
        self, digest: Digest, repos: Sequence[str] = (), *, anywhere: bool = False
    ) -> bool:
        return (self.root / digest.blob_path).is_file()

    def write_blob(
        self, digest: Digest, size: int, chunks: Iterable[bytes], repos: Sequence[str] = ()
    ) -> None:
        path = self.root / digest.blob_path
        try:
            with atomic_output(path, fsync=False) as fh:
                h = hashlib.sha256()
                count = 0
                for chunk in chunks:
                    h.update(chunk)
                    count += len(chunk)
                    fh.write(chunk)
                if count != size or h.hexdigest() != digest.hex:
                    raise MemberDigestError(
                        f"blob {digest}: received {count} bytes with digest sha256:{h.hexdigest()}"
                    )
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise TargetError(f"{self.describe()}: cannot write blob {digest}: {exc}") from None

    def read_blob(self, repo: str, digest: Digest, size: int) -> Iterator[bytes]:
        path = self.root / digest.blob_path
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise TargetError(
                f"{self.describe()}: cannot read blob {digest}: {exc.strerror}"
            ) from None
        with fh:
            while chunk := fh.read(self.limits.io_chunk_bytes):
                yield chunk

    def put_manifest(self, repo: str, digest: Digest, media_type: str, data: bytes) -> None:
        if not self.has_blob(digest):
            self.write_blob(digest, len(data), [data])

    def tag(self, repo: str, ref: ImageReference, media_type: str, data: bytes) -> str:
        digest = Digest.sha256_of(data)
        annotations = {SPARSE_INDEX: "true"} if self._sparse(media_type, data) else {}
        self._pending.append((repo, Descriptor(media_type, digest, len(data), None, annotations)))
        return f"{self.describe()}:{repo}"

    def _sparse(self, media_type: str, data: bytes) -> bool:
        """An index some of whose manifests this layout does not hold (a
        platform subset tagged under the upstream digest): said on its entry."""
        if media_type not in INDEX_TYPES:
            return False
        parsed = parse_manifest(
            data, declared_type=media_type, where="tagged index", limits=self.limits
        )
        return not all(self.has_blob(child.digest) for child in parsed.children)

    def finish(self) -> None:
        if self._pending:
            self.set_refs(self._pending)
            self._pending = []

    def set_refs(self, entries: list[tuple[str, Descriptor]]) -> None:
        """Point each ref name at its descriptor in index.json, atomically."""
        current = _read_index(self.root, error=TargetError, limits=self.limits)
        names = {name for name, _ in entries}
        kept = [d for d in current if d.annotations.get(REF_NAME) not in names]
        for name, desc in entries:
            annotations = {**desc.annotations, REF_NAME: name}
            kept.append(
                Descriptor(desc.media_type, desc.digest, desc.size, desc.platform, annotations, {})
            )
        kept.sort(key=lambda d: d.annotations.get(REF_NAME, ""))
        try:
            with atomic_output(self.root / "index.json") as fh:
                fh.write(layout_index(kept))
        except OSError as exc:
            raise TargetError(f"{self.describe()}: cannot update index.json: {exc}") from None
