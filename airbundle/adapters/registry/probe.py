"""Learn what a registry accepts before an import pushes anything that matters.

Registries differ: nested path depth (Quay organizations take only org/name),
push-to-create (ECR and Harbor need the repository or project first), sparse
indexes, the referrers API versus the tag fallback, manifests that list one
layer twice (self-hosted Quay refuses them: openshift/oc-mirror#1478). Each is
asked with small throw-away pushes into a scratch repository under the target's
prefix (`PREFIX/airbundle-probe`): tiny blobs, manifests pushed by digest and
deleted afterwards where the registry allows deletes, no tag. Whether a new
repository can be created is asked with an upload session that is cancelled
at once, so nothing new stays behind.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from airbundle.adapters.registry.client import RegistryClient
from airbundle.errors import AirbundleError
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST, parse_manifest

SCRATCH = "airbundle-probe"
EMPTY_JSON = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
ARTIFACT_TYPE = "application/vnd.airbundle.probe.v1"
# A layer nothing else will ever hold: the probe's own bytes.
PROBE_LAYER = b"airbundle registry probe\n"


@dataclass(frozen=True)
class Answer:
    """One question asked of the registry: accepted, refused, or not asked
    (None, with why), and what the registry said."""

    accepted: bool | None
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"accepted": self.accepted, "detail": self.detail}


NOT_ASKED = Answer(None, "not asked")


@dataclass
class ProbeResult:
    registry: str
    scratch: str
    push_to_create: Answer = NOT_ASKED
    push: Answer = NOT_ASKED
    sparse_index: Answer = NOT_ASKED
    referrers_api: Answer = NOT_ASKED
    duplicate_layers: Answer = NOT_ASKED
    nested_paths: Answer = NOT_ASKED
    max_depth: int | None = None  # deepest path accepted, where a refusal was met
    depth_tried: int = 0  # deepest path asked about
    cleanup: list[str] = field(default_factory=list)

    def answers(self) -> Iterator[tuple[str, Answer]]:
        yield "push into a new repository (push-to-create)", self.push_to_create
        yield f"push into {self.scratch}", self.push
        yield "nested paths", self.nested_paths
        yield "sparse index (platforms left out)", self.sparse_index
        yield "referrers API (else the sha256-HEX tag fallback)", self.referrers_api
        yield "one layer listed twice in a manifest", self.duplicate_layers

    def describe(self) -> str:
        """What the registry accepts, one line per question, for people."""
        words = {True: "yes", False: "NO", None: "unknown"}
        lines = [f"registry {self.registry} (scratch repository {self.scratch}):"]
        lines += [f"  {name}: {words[a.accepted]} ({a.detail})" for name, a in self.answers()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "registry": self.registry,
            "scratch": self.scratch,
            "pushToCreate": self.push_to_create.to_json(),
            "push": self.push.to_json(),
            "nestedPaths": {
                **self.nested_paths.to_json(),
                "maxDepth": self.max_depth,
                "tried": self.depth_tried,
            },
            "sparseIndex": self.sparse_index.to_json(),
            "referrersApi": self.referrers_api.to_json(),
            "duplicateLayers": self.duplicate_layers.to_json(),
            "cleanup": self.cleanup,
        }


def _blob(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(Digest.sha256_of(data)), "size": len(data)}


def _doc(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _manifest(layers: int = 1, **extra: object) -> bytes:
    return _doc(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob(CONFIG_MEDIA_TYPE, EMPTY_JSON),
            "layers": [_blob(LAYER_MEDIA_TYPE, PROBE_LAYER)] * layers,
            **extra,
        }
    )


def _refusal(exc: AirbundleError) -> str:
    return exc.message


class Prober:
    """One probe of one registry under one prefix."""

    def __init__(self, client: RegistryClient, prefix: str, *, max_depth: int) -> None:
        self.client = client
        self.prefix = prefix
        self.scratch = f"{prefix}/{SCRATCH}" if prefix else SCRATCH
        self.max_depth = max_depth
        self.result = ProbeResult(client.host, self.scratch)
        self._pushed: list[tuple[str, Digest]] = []

    def run(self, *, depth: int | None = None) -> ProbeResult:
        """Every question; `depth`: ask about nesting up to this many path
        components (default: the prober's maximum)."""
        r = self.result
        r.push_to_create = self._create()
        r.push = self._base()
        if r.push.accepted:
            base = _manifest()
            r.sparse_index = self._sparse(base)
            r.referrers_api = self._referrers(base)
            r.duplicate_layers = self._put(self.scratch, _manifest(layers=2))
            self._nesting(depth or self.max_depth)
        else:
            why = f"not asked: {r.push.detail}"
            r.sparse_index = r.referrers_api = r.duplicate_layers = Answer(None, why)
            r.nested_paths = Answer(None, why)
        self._clean()
        return r

    def repeated_layers(self) -> ProbeResult:
        """Only the question of a layer listed twice (what an import needs to
        know when its bundle has such a manifest)."""
        r = self.result
        r.push = self._base()
        if r.push.accepted:
            r.duplicate_layers = self._put(self.scratch, _manifest(layers=2))
        else:
            r.duplicate_layers = Answer(None, f"not asked: {r.push.detail}")
        self._clean()
        return r

    # -- the questions ---------------------------------------------------------------

    def _create(self) -> Answer:
        """An upload session in a repository that does not exist, cancelled at once."""
        repo = f"{self.scratch}-{secrets.token_hex(4)}"
        refused = start_upload(self.client, repo)
        if refused is not None:
            return Answer(False, refused.message)
        return Answer(True, f"an upload could start in {repo} (cancelled)")

    def _base(self) -> Answer:
        try:
            for data in (EMPTY_JSON, PROBE_LAYER):
                digest = Digest.sha256_of(data)
                if not self.client.blob_exists(self.scratch, digest):
                    self.client.upload_blob(self.scratch, digest, len(data), [data])
        except AirbundleError as exc:
            return Answer(False, _refusal(exc))
        return self._put(self.scratch, _manifest())

    def _put(self, repo: str, data: bytes, media_type: str = OCI_MANIFEST) -> Answer:
        digest = Digest.sha256_of(data)
        try:
            self.client.put_manifest(repo, str(digest), media_type, data)
        except AirbundleError as exc:
            return Answer(False, _refusal(exc))
        self._pushed.append((repo, digest))
        return Answer(True, f"{repo}@{digest} stored")

    def _sparse(self, base: bytes) -> Answer:
        absent = _manifest(annotations={"org.opencontainers.image.title": "never pushed"})
        children = []
        for data, arch in ((base, "amd64"), (absent, "arm64")):
            child = _blob(OCI_MANIFEST, data)
            child["platform"] = {"os": "linux", "architecture": arch}
            children.append(child)
        index = _doc({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        return self._put(self.scratch, index, OCI_INDEX)

    def _referrers(self, base: bytes) -> Answer:
        subject = Digest.sha256_of(base)
        artifact = _doc(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": _blob(EMPTY_MEDIA_TYPE, EMPTY_JSON),
                "layers": [_blob(EMPTY_MEDIA_TYPE, EMPTY_JSON)],
                "subject": _blob(OCI_MANIFEST, base),
            }
        )
        stored = self._put(self.scratch, artifact)
        if not stored.accepted:
            return Answer(None, f"a manifest with a subject was refused: {stored.detail}")
        try:
            index = self.client.referrers(self.scratch, subject)
        except AirbundleError as exc:
            return Answer(False, f"GET referrers: {_refusal(exc)}; use the tag fallback")
        if index is None:
            return Answer(False, "no referrers API (GET /v2/…/referrers/… not found): tag fallback")
        try:
            listed = parse_manifest(index.data, declared_type=OCI_INDEX, where="referrers")
        except AirbundleError as exc:
            return Answer(False, f"the referrers answer is not an index ({exc.message})")
        if Digest.sha256_of(artifact) not in {c.digest for c in listed.children}:
            return Answer(False, "the referrers API did not list the artifact pushed: tag fallback")
        return Answer(True, "GET /v2/…/referrers/… lists what refers to a manifest")

    def _nesting(self, depth: int) -> None:
        """Push the probe manifest at deeper and deeper paths below the scratch
        repository, up to `depth` components, until one is refused."""
        r = self.result
        have = self.scratch.count("/") + 1
        r.depth_tried = max(depth, have)
        repo = self.scratch
        deepest = have
        for level in range(have + 1, depth + 1):
            repo = f"{repo}/n{level}"
            answer = self._nested(repo)
            if not answer.accepted:
                r.max_depth = deepest
                r.nested_paths = Answer(
                    False, f"{level} path components refused ({answer.detail}); {deepest} accepted"
                )
                return
            deepest = level
        r.nested_paths = Answer(True, f"{r.depth_tried} path components accepted")

    def _nested(self, repo: str) -> Answer:
        refused = start_upload(self.client, repo)
        if refused is not None:
            return Answer(False, refused.message)
        try:
            for data in (EMPTY_JSON, PROBE_LAYER):
                digest = Digest.sha256_of(data)
                if not self.client.mount_blob(repo, digest, self.scratch):
                    self.client.upload_blob(repo, digest, len(data), [data])
        except AirbundleError as exc:
            return Answer(False, _refusal(exc))
        return self._put(repo, _manifest())

    def _clean(self) -> None:
        """Delete what was pushed, newest first (an index before its child)."""
        kept = []
        for repo, digest in reversed(self._pushed):
            what = f"probe: delete {repo}@{digest}"
            try:
                response = self.client.request(
                    "DELETE",
                    f"/v2/{repo}/manifests/{digest}",
                    scope=self.client.scope(repo, "pull,push,delete"),
                    what=what,
                    retry=False,
                )
                response.close()
                deleted = response.status in (200, 202, 204, 404)
            except AirbundleError:
                deleted = False
            if not deleted:
                kept.append(f"{repo}@{digest}")
        if kept:
            self.result.cleanup.append(
                f"{len(kept)} probe manifest(s) stay (the registry refuses deletes), untagged"
            )


# Answers that are about this moment, not about the registry: asked again.
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


def start_upload(client: RegistryClient, repo: str) -> AirbundleError | None:
    """Whether a push into `repo` can start: an upload session opened and
    cancelled at once (nothing stays, not even a catalog entry). None if it
    can; the registry's refusal (with its status and codes) if not. A
    transient failure counts as "can": the push itself will meet it."""
    what = f"{client.host}/{repo}: start an upload"
    try:
        response = client.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=client.scope(repo, "pull,push"),
            headers={"Content-Length": "0"},
            body=b"",
            what=what,
        )
    except AirbundleError as exc:
        return None if exc.status in _TRANSIENT or exc.status is None else exc
    if response.status != 202:
        if response.status in _TRANSIENT:
            response.close()
            return None
        return client.fail(response, what)
    response.close()
    location = response.headers.get("location")
    if location:
        with contextlib.suppress(AirbundleError):
            cancel = client.request(
                "DELETE",
                location if "://" in location else client.base + location,
                scope=client.scope(repo, "pull,push"),
                what=what,
                retry=False,
            )
            cancel.close()
    return None


def has_referrers_api(client: RegistryClient, repo: str) -> bool | None:
    """The referrers API, asked with a read: a registry that has it answers
    an index (empty for a subject it does not know); one without, 404. None
    when the answer says neither."""
    nobody = Digest.sha256_of(b"airbundle: a subject nothing refers to")
    what = f"referrers of {client.host}/{repo}@{nobody}"
    try:
        response = client.request(
            "GET",
            f"/v2/{repo}/referrers/{nobody}",
            scope=client.scope(repo),
            headers={"Accept": OCI_INDEX},
            what=what,
        )
    except AirbundleError:
        return None
    response.close()
    kind = (response.headers.get("content-type") or "").split(";")[0].strip()
    if response.status == 200 and kind == OCI_INDEX:
        return True
    if response.status == 404:
        return False
    return None


def probe(
    client: RegistryClient, prefix: str, *, max_depth: int, depth: int | None = None
) -> ProbeResult:
    """Ask `client`'s registry what it accepts under `prefix`."""
    return Prober(client, prefix, max_depth=max_depth).run(depth=depth)
