"""Vetting evidence: what the exporter checked about each image, carried in the
signed manifest (its optional ``vetting`` property), and the far side's check
of it before anything is imported.

For every image the exporter judged (the spec's images, not what refers to
them), the evidence records the policy scope that applied, every upstream
signature found with its payload and signature (so that the far side can
verify them again, offline, against its own keys), which of them verified on
the export side (key fingerprint, signed identity), and each vet command's
exit code and report. A report is an OCI artifact that refers to the image
(``subject``), carried as one more image of the bundle: no new member kind.

The far side trusts none of it as a verdict: :func:`check_bundle` judges each
carried image again under its own policy from the signatures alone, and
checks that every image has a passing vet record when asked to.

Pure: JSON in and out, decisions on values.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airbundle.errors import FormatError, ManifestError, VettingError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, index_bytes, parse_manifest
from airbundle.format.policy import DockerName, Found, ImagePolicy, Verdict, judge
from airbundle.format.reference import ImageReference

if TYPE_CHECKING:
    from airbundle.format.manifest import ImageEntry

REPORT_ARTIFACT_TYPE = "application/vnd.airbundle.vet-report.v1"
REPORT_MEDIA_TYPE = "text/plain"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
ANNOTATION_COMMAND = "dev.airbundle.vet.command"
ANNOTATION_EXIT = "dev.airbundle.vet.exit-code"
ANNOTATION_CREATED = "org.opencontainers.image.created"
# The tags artifacts referring to an image are found under (OCI fallback tag,
# cosign's attachments).
_ATTACHMENT_TAG = re.compile(r"sha256-[0-9a-f]{64}(\.(sig|att|sbom))?")


@dataclass(frozen=True)
class SignatureEvidence:
    """One upstream signature found for an image, as found, and whether it
    verified on the export side (under the keys of the scope that applied)."""

    where: str  # the tag or referrer it was found under
    payload: bytes
    signature: str  # base64, as found in the annotation
    key_fingerprint: str | None = None
    key_type: str | None = None
    identity: str | None = None  # the signed docker-reference
    signed_digest: str | None = None

    @property
    def verified(self) -> bool:
        return self.key_fingerprint is not None

    def found(self) -> Found:
        return Found(self.payload, self.signature, self.where)


@dataclass(frozen=True)
class VetRecord:
    command: int  # index into VettingRecord.commands
    exit_code: int | None  # None: killed at the timeout
    timed_out: bool
    report: Digest  # the report artifact (an image of the bundle)
    report_blob: Digest  # the report's bytes (the artifact's layer)
    report_size: int
    output_bytes: int  # what the command wrote; more than report_size if cut

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def truncated(self) -> bool:
        return self.output_bytes > self.report_size

    def outcome(self) -> str:
        if self.timed_out:
            return "timed out"
        return "passed" if self.passed else f"failed (exit {self.exit_code})"


@dataclass(frozen=True)
class SourceIndex:
    """A platform subset: the index the source signed, and the children kept."""

    data: bytes
    children: tuple[Digest, ...]

    def rebuilds(self, carried: Digest, signed: Digest) -> bool:
        """True if `data` is the signed index and keeping `children` of it
        gives exactly the carried index (as export builds a subset)."""
        if Digest.sha256_of(self.data) != signed:
            return False
        try:
            parsed = parse_manifest(self.data, declared_type=None, where="source index")
        except FormatError:
            return False
        by_digest = {c.digest: c for c in parsed.children}
        if any(d not in by_digest for d in self.children):
            return False
        kept = [c for c in parsed.children if c.digest in set(self.children)]
        return Digest.sha256_of(index_bytes(kept)) == carried


@dataclass(frozen=True)
class ImageEvidence:
    ref: ImageReference
    digest: Digest
    identity: str | None = None  # the reference the export-side policy judged
    scope: str | None = None  # the scope that applied, None without a policy
    signatures: tuple[SignatureEvidence, ...] = ()
    vets: tuple[VetRecord, ...] = ()
    attachments: tuple[Digest, ...] = ()  # carried images that refer to it
    source_index: SourceIndex | None = None


@dataclass(frozen=True)
class VettingRecord:
    policy: Digest | None  # sha256 of the policy file the exporter used
    commands: tuple[tuple[str, ...], ...] = ()
    warn_only: bool = False
    images: tuple[ImageEvidence, ...] = ()

    def for_image(self, ref: ImageReference, digest: Digest) -> ImageEvidence | None:
        for evidence in self.images:
            if evidence.ref == ref and evidence.digest == digest:
                return evidence
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": str(self.policy) if self.policy else None,
            "commands": [list(c) for c in self.commands],
            "warnOnly": self.warn_only,
            "images": [_image_json(i) for i in self.images],
        }

    @classmethod
    def from_json(cls, doc: Any) -> VettingRecord:
        for error in schemas.errors(schemas.VETTING, doc):
            raise ManifestError(
                f"bundle manifest: field vetting.{schemas.json_path(error)}: {error.message}"
            )
        try:
            record = cls(
                Digest.parse(doc["policy"]) if doc["policy"] else None,
                tuple(tuple(c) for c in doc["commands"]),
                doc["warnOnly"],
                tuple(_image(i, d) for i, d in enumerate(doc["images"])),
            )
        except FormatError as exc:
            raise ManifestError(f"bundle manifest: vetting: {exc.message}") from None
        for evidence in record.images:
            for vet in evidence.vets:
                if vet.command >= len(record.commands):
                    raise ManifestError(
                        f"bundle manifest: vetting: {evidence.ref} names vet command "
                        f"{vet.command}, which is not listed"
                    )
        return record

    def check_against(self, images: Sequence[ImageEntry]) -> None:
        """Every image, attachment and report the evidence names is carried."""
        carried = {(i.ref, i.digest) for i in images}
        digests = {i.digest for i in images}
        for evidence in self.images:
            if (evidence.ref, evidence.digest) not in carried:
                raise ManifestError(
                    f"bundle manifest: vetting names {evidence.ref}@{evidence.digest}, "
                    "which the bundle does not carry"
                )
            named = [*evidence.attachments, *(v.report for v in evidence.vets)]
            missing = [d for d in named if d not in digests]
            if missing:
                raise ManifestError(
                    f"bundle manifest: vetting of {evidence.ref} names {missing[0]}, "
                    "which the bundle does not carry"
                )


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ManifestError(f"bundle manifest: vetting: {where} is not base64") from None


def _image_json(e: ImageEvidence) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ref": str(e.ref),
        "digest": str(e.digest),
        "identity": e.identity,
        "scope": e.scope,
        "signatures": [
            {
                "where": s.where,
                "payload": base64.b64encode(s.payload).decode("ascii"),
                "signature": s.signature,
                "verified": {
                    "keyFingerprint": s.key_fingerprint,
                    "keyType": s.key_type,
                    "identity": s.identity,
                    "digest": s.signed_digest,
                }
                if s.verified
                else None,
            }
            for s in e.signatures
        ],
        "vets": [
            {
                "command": v.command,
                "exitCode": v.exit_code,
                "timedOut": v.timed_out,
                "report": str(v.report),
                "reportBlob": str(v.report_blob),
                "reportSize": v.report_size,
                "outputBytes": v.output_bytes,
            }
            for v in e.vets
        ],
        "attachments": [str(d) for d in e.attachments],
    }
    if e.source_index is not None:
        out["sourceIndex"] = {
            "data": base64.b64encode(e.source_index.data).decode("ascii"),
            "children": [str(d) for d in e.source_index.children],
        }
    return out


def _image(i: int, d: dict[str, Any]) -> ImageEvidence:
    where = f"images[{i}]"
    ref = ImageReference.parse(d["ref"])
    signatures = tuple(
        SignatureEvidence(
            s["where"],
            _b64(s["payload"], f"{where}.signatures[{j}].payload"),
            s["signature"],
            *(
                (v["keyFingerprint"], v["keyType"], v["identity"], v["digest"])
                if (v := s["verified"]) is not None
                else ()
            ),
        )
        for j, s in enumerate(d["signatures"])
    )
    vets = tuple(
        VetRecord(
            v["command"],
            v["exitCode"],
            v["timedOut"],
            Digest.parse(v["report"]),
            Digest.parse(v["reportBlob"]),
            v["reportSize"],
            v["outputBytes"],
        )
        for v in d["vets"]
    )
    source = d.get("sourceIndex")
    return ImageEvidence(
        ref,
        Digest.parse(d["digest"]),
        d["identity"],
        d["scope"],
        signatures,
        vets,
        tuple(Digest.parse(a) for a in d["attachments"]),
        SourceIndex(
            _b64(source["data"], f"{where}.sourceIndex.data"),
            tuple(Digest.parse(c) for c in source["children"]),
        )
        if source is not None
        else None,
    )


# -- vet reports as OCI artifacts -------------------------------------------------


@dataclass(frozen=True)
class ReportArtifact:
    """A vet report as an OCI artifact manifest whose subject is the image."""

    manifest: bytes
    config: Descriptor
    layer: Descriptor
    report: bytes

    @property
    def digest(self) -> Digest:
        return Digest.sha256_of(self.manifest)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(OCI_MANIFEST, self.digest, len(self.manifest))

    def blob(self, digest: Digest) -> bytes:
        return EMPTY_CONFIG if digest == self.config.digest else self.report


def report_artifact(
    subject: Descriptor, report: bytes, *, command: Sequence[str], exit_code: int | None,
    created: str,
) -> ReportArtifact:  # fmt: skip
    """The artifact carrying one vet command's report of the image `subject`;
    deterministic bytes for the same inputs."""
    config = Descriptor(EMPTY_MEDIA_TYPE, Digest.sha256_of(EMPTY_CONFIG), len(EMPTY_CONFIG))
    layer = Descriptor(REPORT_MEDIA_TYPE, Digest.sha256_of(report), len(report))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": REPORT_ARTIFACT_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json()],
        "subject": {
            "mediaType": subject.media_type,
            "digest": str(subject.digest),
            "size": subject.size,
        },
        "annotations": {
            ANNOTATION_COMMAND: json.dumps(list(command), ensure_ascii=False),
            ANNOTATION_EXIT: "timeout" if exit_code is None else str(exit_code),
            ANNOTATION_CREATED: created,
        },
    }
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    return ReportArtifact(data, config, layer, report)


# -- the far side's check ---------------------------------------------------------


@dataclass(frozen=True)
class ImageCheck:
    """The far side's judgement of one carried image."""

    ref: ImageReference
    digest: Digest
    verdict: Verdict | None = None  # None without --policy
    vetted: bool | None = None  # None without --require-vetted
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def accepted(self) -> bool:
        return not self.problems


def attachments(images: Sequence[ImageEntry], record: VettingRecord | None) -> set[Digest]:
    """Carried images that the evidence lists as referring to a judged image,
    and whose names say so (its repository; a referrer tag of it or no tag):
    they travel with their subject and are not judged on their own, as
    containers/image never judges a signature or an SBOM as an image."""
    if record is None:
        return set()
    by_digest = {i.digest: i for i in images}
    out: set[Digest] = set()
    for evidence in record.images:
        for digest in (*evidence.attachments, *(v.report for v in evidence.vets)):
            entry = by_digest.get(digest)
            if entry is None or entry.ref.name != evidence.ref.name:
                continue
            if entry.ref.tag is None or _ATTACHMENT_TAG.fullmatch(entry.ref.tag):
                out.add(digest)
    return out


def check_bundle(
    images: Sequence[ImageEntry],
    record: VettingRecord | None,
    policy: ImagePolicy | None,
    *,
    require_vetted: bool,
    what: str,
) -> list[ImageCheck]:
    """Judge every carried image again, from the evidence alone: under
    `policy` (its signatures verified again with the policy's own keys), and
    for a passing vet record. Raises VettingError naming every image refused."""
    attached = attachments(images, record)
    checks = [
        _check_image(entry, record, policy, require_vetted=require_vetted, what=what)
        for entry in images
        if entry.digest not in attached
    ]
    refused = [c for c in checks if not c.accepted]
    if refused:
        shown = "; ".join(f"{c.ref}: {' / '.join(c.problems)}" for c in refused[:10])
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise VettingError(
            f"{what}: {len(refused)} image(s) refused: {shown}{more}",
            hint="nothing was imported; the bundle's vetting evidence does not satisfy "
            "this side's policy",
        )
    return checks


def _check_image(
    entry: ImageEntry,
    record: VettingRecord | None,
    policy: ImagePolicy | None,
    *,
    require_vetted: bool,
    what: str,
) -> ImageCheck:
    evidence = record.for_image(entry.ref, entry.digest) if record is not None else None
    problems: list[str] = []
    verdict = None
    if policy is not None:
        digests = {entry.digest}
        if evidence is not None and evidence.source_index is not None and entry.source_digest:
            # A platform subset: the signature covers the source's index, from
            # which the carried one must rebuild exactly.
            if evidence.source_index.rebuilds(entry.digest, entry.source_digest):
                digests.add(entry.source_digest)
            else:
                problems.append("the carried index is not a subset of the signed one")
        found = [s.found() for s in evidence.signatures] if evidence is not None else []
        verdict = judge(
            policy, DockerName.of(entry.ref), frozenset(digests), found, what=f"{what}: {entry.ref}"
        )
        problems += [f"{verdict.scope.describe()}: {r}" for r in verdict.reasons]
    vetted = None
    if require_vetted:
        vetted = _vetted(evidence, record, problems)
    return ImageCheck(entry.ref, entry.digest, verdict, vetted, tuple(problems))


def _vetted(
    evidence: ImageEvidence | None, record: VettingRecord | None, problems: list[str]
) -> bool:
    if evidence is None or not evidence.vets:
        problems.append("no vet record (export --vet-command)")
        return False
    assert record is not None
    failed = [v for v in evidence.vets if not v.passed]
    for vet in failed:
        problems.append(f"vet command {' '.join(record.commands[vet.command])!r} {vet.outcome()}")
    return not failed


def index_of(documents: dict[Digest, bytes], root: Digest) -> bytes | None:
    """The bytes of `root` if it is an index (for SourceIndex), else None."""
    data = documents.get(root)
    if data is None:
        return None
    try:
        parsed = parse_manifest(data, declared_type=None, where="index")
    except FormatError:
        return None
    return data if parsed.media_type == OCI_INDEX or parsed.is_index else None
