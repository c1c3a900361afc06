"""The images a store serves, as the registry API sees them.

Repositories, tags, manifests, blobs and referrers, built from root
descriptors (an OCI layout's `index.json`, a bundle's signed image list) by
walking their manifests. The layout store and the bundle store share it; each
supplies the bytes of a manifest by digest (a file, a bundle member) and
checks them against the digest before handing them over.

An image joins a view only once every manifest under its root was read and
parsed; one that cannot be read whole is left out with a warning. A view is
never changed once built: a store swaps in a new one whole.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from airbundle.adapters.content import ImageSummary, Manifest
from airbundle.errors import AirbundleError, TargetError
from airbundle.format.digest import Digest
from airbundle.format.distribution import referrer_descriptor
from airbundle.format.jsonutil import loads_strict
from airbundle.format.mapping import MappingOptions, RegistryLocation, target_repository
from airbundle.format.oci import SPARSE_INDEX, Descriptor, Platform, parse_manifest
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

# The host part is dropped by the mapping; a placeholder keeps RegistryLocation whole.
_HERE = RegistryLocation("serve.invalid", "")

# The bytes of a manifest or index, checked against the descriptor's digest and size.
ReadDocument = Callable[[Descriptor], bytes]
# Whether the store holds a document at all (without reading it).
HasDocument = Callable[[Descriptor], bool]


@dataclass
class Doc:
    manifest: Manifest
    children: tuple[Descriptor, ...]
    blobs: tuple[Descriptor, ...]
    subject: Digest | None
    referrer: dict[str, Any]


@dataclass
class Repo:
    tags: dict[str, Digest] = field(default_factory=dict)
    manifests: set[Digest] = field(default_factory=set)
    blobs: set[Digest] = field(default_factory=set)
    referrers: dict[Digest, dict[Digest, dict[str, Any]]] = field(default_factory=dict)
    roots: list[tuple[str | None, str, Digest]] = field(default_factory=list)  # tag, source


@dataclass
class ImageView:
    """One consistent state of what is served; answers the registry's questions."""

    revision: Hashable = None
    repos: dict[str, Repo] = field(default_factory=dict)
    docs: dict[Digest, Doc] = field(default_factory=dict)

    def repositories(self) -> list[str]:
        return sorted(self.repos)

    def tags(self, repository: str) -> list[str] | None:
        repo = self.repos.get(repository)
        return None if repo is None else sorted(repo.tags)

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        repo = self.repos.get(repository)
        if repo is None:
            return None
        digest = repo.tags.get(reference) if ":" not in reference else Digest.parse(reference)
        if digest is None or digest not in repo.manifests:
            return None
        doc = self.docs.get(digest)
        return doc.manifest if doc is not None else None

    def has_blob(self, repository: str, digest: Digest) -> bool:
        """A config, layer or manifest of one of the repository's images."""
        repo = self.repos.get(repository)
        return repo is not None and (digest in repo.blobs or digest in repo.manifests)

    def referrers(self, repository: str, subject: Digest) -> list[dict[str, Any]]:
        repo = self.repos.get(repository)
        if repo is None:
            return []
        found = repo.referrers.get(subject, {})
        return [found[d] for d in sorted(found)]

    def images(self) -> list[ImageSummary]:
        out = []
        for name, repo in sorted(self.repos.items()):
            for tag, source, digest in sorted(repo.roots, key=lambda r: (r[0] or "", r[1])):
                doc = self.docs[digest]
                platforms: list[Platform] = []
                sizes: dict[Digest, int] = {}
                pending = [doc]
                while pending:
                    current = pending.pop()
                    sizes[current.manifest.digest] = current.manifest.size
                    sizes.update((b.digest, b.size) for b in current.blobs)
                    for child in current.children:
                        if child.platform is not None:
                            platforms.append(child.platform)
                        if child.digest in self.docs:
                            pending.append(self.docs[child.digest])
                out.append(
                    ImageSummary(
                        name,
                        tag,
                        source,
                        digest,
                        doc.manifest.media_type,
                        tuple(platforms),
                        sum(sizes.values()),
                    )
                )
        return out


class ImageWalker:
    """Builds views from roots; keeps every manifest it parsed (a digest read
    once never changes), so a new view reads only what is new."""

    def __init__(
        self,
        read: ReadDocument,
        *,
        present: HasDocument = lambda _: True,
        keep_source_host: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.read = read
        self.present = present
        self.mapping = MappingOptions(keep_source_host=keep_source_host)
        self.limits = limits
        self._docs: dict[Digest, Doc] = {}

    def view(
        self, roots: Iterable[tuple[str, Descriptor]], *, where: str, revision: Hashable = None
    ) -> tuple[ImageView, list[str]]:
        """Roots are (full image reference, descriptor); the reference names the
        repository and tag as `import --registry HOST/PREFIX` maps them."""
        view = ImageView(revision=revision, docs=self._docs)
        warnings: list[str] = []
        owners: dict[str, str] = {}
        for name, root in roots:
            try:
                ref = ImageReference.parse(name)
                repo_name = target_repository(ref, _HERE, self.mapping)
            except AirbundleError as exc:
                warnings.append(f"{where}: image {name!r} left out: {exc.message}")
                continue
            owner = owners.setdefault(repo_name, ref.name)
            if owner != ref.name:
                warnings.append(
                    f"{where}: {ref} left out: {owner} is already served as {repo_name} "
                    "(serve with --keep-source-host to keep both)"
                )
                continue
            repo = view.repos.get(repo_name) or Repo()
            try:
                self._walk(repo, root)
            except AirbundleError as exc:
                warnings.append(f"{where}: image {name!r} left out: {exc.message}")
                continue
            view.repos[repo_name] = repo
            repo.roots.append((ref.tag, str(ref), root.digest))
            if ref.tag is not None:
                repo.tags[ref.tag] = root.digest
        return view, warnings

    def _walk(self, repo: Repo, root: Descriptor) -> None:
        """Every manifest under `root` (an index's children, nested), the blobs
        they reference, and the referrers among them."""
        pending = [(root, 0)]
        found: list[Doc] = []
        # A platform subset tagged under its upstream digest: the platforms
        # left behind are absent on purpose; serve what is there.
        sparse = root.annotations.get(SPARSE_INDEX) == "true"
        while pending:
            desc, depth = pending.pop()
            if depth > self.limits.max_index_depth:
                raise TargetError(
                    f"index {desc.digest} nests deeper than {self.limits.max_index_depth} levels"
                )
            if sparse and depth == 1 and not self.present(desc):
                continue
            doc = self._doc(desc)
            found.append(doc)
            pending.extend((child, depth + 1) for child in doc.children)
        # Only once the whole image is readable does any of it join the repo.
        for doc in found:
            digest = doc.manifest.digest
            repo.manifests.add(digest)
            repo.blobs.update(b.digest for b in doc.blobs)
            if doc.subject is not None:
                repo.referrers.setdefault(doc.subject, {})[digest] = doc.referrer

    def _doc(self, desc: Descriptor) -> Doc:
        known = self._docs.get(desc.digest)
        if known is not None:
            return known
        if desc.size > self.limits.max_oci_manifest_bytes:
            raise TargetError(f"manifest {desc.digest} is too large ({desc.size} bytes)")
        data = self.read(desc)
        if len(data) != desc.size or Digest.sha256_of(data) != desc.digest:
            raise TargetError(f"manifest {desc.digest} does not match its digest or size")
        where = f"manifest {desc.digest}"
        parsed = parse_manifest(
            data, declared_type=desc.media_type, where=where, limits=self.limits
        )
        raw = loads_strict(
            data,
            what=where,
            max_bytes=self.limits.max_oci_manifest_bytes,
            max_depth=self.limits.max_json_depth,
            error=TargetError,
        )
        manifest = Manifest(parsed.media_type, desc.digest, data)
        referrer = referrer_descriptor(
            raw, media_type=parsed.media_type, digest=desc.digest, size=len(data)
        )
        subject = parsed.subject.digest if parsed.subject is not None else None
        doc = Doc(manifest, parsed.children, parsed.blobs, subject, referrer)
        self._docs[desc.digest] = doc
        return doc
