"""Images pushed into a registry during import, digests preserved byte for byte."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from airbundle.adapters.images import MirrorEntries
from airbundle.adapters.pipeline import parallel, prefetch
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.probe import (
    Prober,
    ProbeResult,
    has_referrers_api,
    start_upload,
)
from airbundle.errors import TargetError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.mapping import MappingOptions, RegistryLocation, map_images
from airbundle.format.mirrorconfig import CarriedImage, MirrorTrust
from airbundle.format.oci import OCI_INDEX, Descriptor, index_bytes, parse_manifest
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

# How Harbor and Quay refuse a push into a project or organisation that does not
# exist yet (distribution's error codes, or a plain 404).
_NO_PROJECT_CODES = frozenset({"NAME_UNKNOWN", "DENIED", "NOT_FOUND"})


@contextlib.contextmanager
def _project_hint(repo: str) -> Iterator[None]:
    """Harbor and Quay refuse pushes into a project/organisation that does not
    exist yet, with NAME_UNKNOWN or a denial: say which one to create."""
    try:
        yield
    except TargetError as exc:
        if exc.status == 404 or _NO_PROJECT_CODES.intersection(exc.codes):
            project = repo.split("/", 1)[0]
            exc.hint = (
                f"the registry may need the project or organisation {project!r} to "
                "exist before a push: create it (Harbor, Quay) and re-run the import"
            )
        raise


def mirror_trust(client: RegistryClient) -> tuple[Path | None, MirrorTrust]:
    """How this client reached the registry, for clients that will pull from
    it: plain HTTP, TLS it did not verify (--insecure-registry), or TLS checked
    against --ca-file (whose certificates they will need)."""
    tls = client.transport.tls
    if client.base.startswith("http://"):
        return None, MirrorTrust.plain_http()
    if client.host in tls.insecure_hosts:
        return None, MirrorTrust("https", verify=False)
    if tls.ca_file is None:
        return None, MirrorTrust()
    return tls.ca_file, MirrorTrust("https", ca_pem=read_ca_file(tls.ca_file))


def read_ca_file(path: Path) -> str:
    """A CA bundle to hand on to clients: PEM certificates, nothing else."""
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"CA file {path}: cannot be read ({exc})") from None
    try:
        MirrorTrust("https", ca_pem=text)
    except UsageError:
        raise UsageError(f"CA file {path}: no PEM certificate in it") from None
    return text


class RegistryImageTarget:
    """Blobs first (HEAD to skip, mount across repositories), manifests next, tags last."""

    def __init__(
        self,
        client: RegistryClient,
        location: RegistryLocation,
        options: MappingOptions | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.client = client
        self.location = location
        self.options = options or MappingOptions()
        self.limits = limits
        # Target repository of each image, set by assign().
        self.mapping: dict[ImageReference, str] = {}
        # Which repositories are known to hold a blob (filled as we go), so that
        # the next repository can mount instead of upload.
        self._holders: dict[Digest, set[str]] = {}
        # Answers of warm(), used once each (a later question asks again).
        self._checked: dict[tuple[Digest, str], bool] = {}
        self._lock = threading.Lock()
        # Small blobs are read whole (and so checked) from the stream, then
        # uploaded in the background while the stream moves on: hundreds of
        # small layers are round trips, not bytes. Bounded in count and size.
        self._uploads = ThreadPoolExecutor(max_workers=limits.async_uploads)
        self._pending: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(limits.async_uploads * 2)
        self._probed: ProbeResult | None = None
        self._referrers_api: tuple[bool | None] | None = None  # asked once

    def describe(self) -> str:
        return f"registry {self.client.host}"

    def state_key(self) -> str:
        return f"images={self.location.host}/{self.location.prefix}".rstrip("/")

    def state_dir(self) -> Path | None:
        return None

    def report_folder(self) -> Path | None:
        return None

    def locked(self) -> contextlib.AbstractContextManager[None]:
        # A registry takes concurrent pushes; the import state is locked anyway.
        return contextlib.nullcontext()

    def assign(
        self, refs: Sequence[ImageReference], *, max_nested_paths: int | None = None
    ) -> None:
        if max_nested_paths is not None:
            self.options = dataclasses.replace(self.options, max_nested_paths=max_nested_paths)
        self.mapping = map_images(list(refs), self.location, self.options)

    def preflight(self) -> dict[str, TargetError]:
        """An upload session started and cancelled in every assigned repository:
        a registry that refuses deep paths, or pushes into repositories (or
        projects) nobody created, says so here, before anything is written."""
        repos = sorted(set(self.mapping.values()))
        refused = parallel(
            lambda repo: start_upload(self.client, repo), repos, workers=self.limits.import_workers
        )
        return {
            repo: error if isinstance(error, TargetError) else TargetError(error.message)
            for repo, error in zip(repos, refused, strict=True)
            if error is not None
        }

    def referrers_api(self) -> bool | None:
        if self._referrers_api is None:
            repo = min(self.mapping.values(), default=self.location.prefix or "library")
            self._referrers_api = (has_referrers_api(self.client, repo),)
        return self._referrers_api[0]

    def accepts_repeated_layers(self) -> bool | None:
        """Asked only when a bundle has such a manifest: the probe's question,
        in its scratch repository."""
        if self._probed is None:
            self._probed = Prober(
                self.client, self.location.prefix, max_depth=self.limits.probe_max_depth
            ).repeated_layers()
        return self._probed.duplicate_layers.accepted

    def index_referrers(self, repo: str, subject: Digest, referrers: Sequence[Descriptor]) -> None:
        """The referrers tag schema of the distribution spec: an index under
        the tag `sha256-HEX` of the subject listing what refers to it, merged
        with what the tag already lists."""
        tag = f"{subject.algorithm}-{subject.hex}"
        listed: dict[Digest, Descriptor] = {}
        current = self.client.find_manifest(repo, tag)
        if current is not None:
            parsed = parse_manifest(
                current.data,
                declared_type=current.media_type or OCI_INDEX,
                where=f"{self.client.host}/{repo}:{tag}",
                limits=self.limits,
            )
            listed.update((c.digest, c) for c in parsed.children)
        added = [d for d in referrers if d.digest not in listed]
        if not added and current is not None:
            return
        listed.update((d.digest, d) for d in added)
        data = index_bytes(sorted(listed.values(), key=lambda d: str(d.digest)))
        self.client.put_manifest(repo, tag, OCI_INDEX, data)

    def mirror_host(self) -> str | None:
        return self.client.host

    def mirror_entries(self) -> MirrorEntries:
        images = [CarriedImage(ref, self.client.host, repo) for ref, repo in self.mapping.items()]
        ca_file, trust = mirror_trust(self.client)
        return MirrorEntries(images, trust, ca_file)

    def list_blobs(self) -> set[Digest]:
        """Every digest the repositories under the prefix hold: the catalog,
        each repository's tags, each tag's manifests walked down to the blobs."""
        prefix = self.location.prefix + "/" if self.location.prefix else ""
        found: set[Digest] = set()
        for repo in self.client.catalog():
            if repo.startswith(prefix):
                found |= self._repository_digests(repo)
        return found

    def _repository_digests(self, repo: str) -> set[Digest]:
        found: set[Digest] = set()
        pending = [urllib.parse.quote(t, safe="") for t in self.client.tags(repo)]
        seen: set[str] = set()
        while pending:
            ref = pending.pop()
            if ref in seen:
                continue
            seen.add(ref)
            fetched = self.client.get_manifest(repo, ref)
            found.add(fetched.digest)
            parsed = parse_manifest(
                fetched.data,
                declared_type=fetched.media_type or None,
                where=f"{repo}:{ref}",
                limits=self.limits,
            )
            pending += [str(c.digest) for c in parsed.children]
            found |= {b.digest for b in parsed.blobs}
        return found

    def prepare(self) -> None:
        pass

    def locate(self, ref: ImageReference) -> str:
        try:
            return self.mapping[ref]
        except KeyError:
            raise TargetError(f"no target repository mapped for {ref}") from None

    def published(self, ref: ImageReference) -> Digest | None:
        """A HEAD on the manifest under its tag (or digest): Docker-Content-Digest."""
        reference = ref.tag or str(ref.digest)
        return self.client.manifest_digest(self.locate(ref), reference)

    def where(self, repo: str, ref: ImageReference) -> str:
        suffix = f":{ref.tag}" if ref.tag else ""
        digest = f"@{ref.digest}" if ref.digest else ""
        return f"{self.client.host}/{repo}{suffix}{digest}"

    def _known(self, digest: Digest, repo: str) -> None:
        with self._lock:
            self._holders.setdefault(digest, set()).add(repo)

    def warm(self, needed: dict[Digest, list[str]]) -> None:
        """Ask about every (blob, repository) pair at once, in parallel: a bundle
        of hundreds of small images should not wait on one HEAD at a time."""
        pairs = [(d, r) for d, repos in needed.items() for r in repos]
        found = parallel(
            lambda pair: self.client.blob_exists(pair[1], pair[0]),
            pairs,
            workers=self.limits.import_workers,
        )
        with self._lock:
            for (digest, repo), present in zip(pairs, found, strict=True):
                self._checked[(digest, repo)] = present
                if present:
                    self._holders.setdefault(digest, set()).add(repo)

    def _exists(self, repo: str, digest: Digest) -> bool:
        with self._lock:
            known = self._checked.pop((digest, repo), None)
        return known if known is not None else self.client.blob_exists(repo, digest)

    def has_blob(self, digest: Digest, repos: Sequence[str], *, anywhere: bool = False) -> bool:
        """True if every repo holds the blob (mounting it where it is missing).

        With `anywhere`, also look in the target's other repositories (a base
        blob of an incremental bundle): a question per repository, so only for
        blobs the bundle does not carry."""
        missing = []
        for repo in repos:
            if self._exists(repo, digest):
                self._known(digest, repo)
            else:
                missing.append(repo)
        if not missing:
            return True
        holders = self._holders.get(digest)
        if not holders and not anywhere:
            return False
        if not holders:
            # An incremental bundle's base blob may sit in another repository
            # of this target (a shared base layer): try mounting from those.
            for candidate in sorted(set(self.mapping.values()) - set(missing)):
                if self.client.blob_exists(candidate, digest):
                    self._known(digest, candidate)
                    holders = {candidate}
                    break
            else:
                return False
        source = sorted(holders)[0]
        for repo in missing:
            if not self.client.mount_blob(repo, digest, source):
                return False
            self._known(digest, repo)
        return True

    def write_blob(
        self, digest: Digest, size: int, chunks: Iterable[bytes], repos: Sequence[str]
    ) -> None:
        if size <= self.limits.async_upload_bytes:
            data = b"".join(chunks)  # raises here if the bytes do not match
            self._slots.acquire()
            self._pending.append(
                self._uploads.submit(self._upload, digest, size, [data], repos, True)
            )
            return
        ahead = prefetch(chunks, depth=self.limits.prefetch_chunks)
        try:
            self._upload(digest, size, ahead, repos, False)
        finally:
            # Stop the read-ahead thread now, not when the failure's traceback
            # is freed: the caller may go on to drain `chunks` itself.
            ahead.close()

    def drain(self) -> None:
        """Wait for background uploads; the first failure is raised."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _upload(
        self,
        digest: Digest,
        size: int,
        chunks: Iterable[bytes],
        repos: Sequence[str],
        release: bool,
    ) -> None:
        try:
            self._store(digest, size, chunks, repos)
        finally:
            if release:
                self._slots.release()

    def _store(
        self, digest: Digest, size: int, chunks: Iterable[bytes], repos: Sequence[str]
    ) -> None:
        first, *others = repos
        with _project_hint(first):
            self.client.upload_blob(first, digest, size, chunks)
        self._known(digest, first)
        for repo in others:
            if not self.client.mount_blob(repo, digest, first):
                raise TargetError(
                    f"{self.client.host}: could not mount {digest} into {repo} "
                    "(the registry refused a cross-repository mount)"
                )
            self._known(digest, repo)

    def read_blob(self, repo: str, digest: Digest, size: int) -> Iterator[bytes]:
        return self.client.blob_chunks(repo, digest, size)

    def put_manifest(self, repo: str, digest: Digest, media_type: str, data: bytes) -> None:
        if self.client.manifest_exists(repo, digest):
            return
        self.client.put_manifest(repo, str(digest), media_type, data)

    def tag(self, repo: str, ref: ImageReference, media_type: str, data: bytes) -> str:
        if ref.tag:
            self.client.put_manifest(repo, ref.tag, media_type, data)
        return self.where(repo, ref)

    def finish(self) -> None:
        self.drain()
        self._uploads.shutdown(wait=True)
