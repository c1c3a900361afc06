"""Vetting: judge every image under an image policy (containers-policy.json:
upstream sigstore signatures), run vet commands (scanners) on each, and make
the evidence the signed manifest carries; on the far side, judge the bundle
again from that evidence before anything is written.

Export calls, in order:

1. `judge_images` (also `plan`): for each spec image, the signatures found
   where cosign and containers/image put them (the ``sha256-HEX.sig`` tag and
   the referrers API or its fallback tag), judged under the scope of the
   policy that applies. Only manifests and signature payloads are fetched.
2. `refuse_rejected`: the export stops, naming each image, scope and reason.
3. `vet_images`: each image downloaded once into a store beside the output,
   laid out as an OCI layout of its own, each vet command run on it in a
   bounded pool; the reports become OCI artifacts referring to their image;
   the evidence (format/vetting.py) goes into the manifest.

Import calls `check_import` right after the bundle's signatures verified.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from airbundle.adapters.commands import CommandResult, CommandRunner
from airbundle.adapters.fsutil import read_regular
from airbundle.adapters.images import ReferringSource
from airbundle.adapters.vetlayout import BlobStore, MemorySource, StoreSource
from airbundle.errors import FormatError, PolicyError, SourceError, UsageError, VettingError
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest
from airbundle.format.oci import INDEX_TYPES, Descriptor, parse_manifest
from airbundle.format.policy import DockerName, Found, ImagePolicy, Verdict, judge, parse_policy
from airbundle.format.simplesigning import SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE
from airbundle.format.spec import BundleSpec, ImageSpec
from airbundle.format.vetting import (
    ImageCheck,
    ImageEvidence,
    ReportArtifact,
    SignatureEvidence,
    SourceIndex,
    VetRecord,
    VettingRecord,
    check_bundle,
    report_artifact,
)
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.collect import CollectedImage
from airbundle.ops.sources import Sources

DEFAULT_VET_TIMEOUT = 30 * 60.0
PLACEHOLDERS = ("{layout}", "{ref}", "{digest}")


@dataclass(frozen=True)
class VettingOptions:
    policy: ImagePolicy | None = None
    # Vet command templates, each an argument list with {layout}, {ref}, {digest}.
    commands: tuple[tuple[str, ...], ...] = ()
    # A failing vet command is recorded and warned about instead of failing the export.
    warn: bool = False
    timeout: float = DEFAULT_VET_TIMEOUT

    @property
    def active(self) -> bool:
        return self.policy is not None or bool(self.commands)


# -- inputs -----------------------------------------------------------------------


def _read_file(path: Path, *, limit: int, what: str) -> bytes:
    """A regular file of at most `limit` bytes (a FIFO or a device is refused):
    the one capped reader, fsutil.read_regular."""
    return read_regular(path, limit=limit, what=what, error=PolicyError)


def load_image_policy(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> ImagePolicy:
    """A containers-policy.json file; `keyPath`s are read as containers/image
    reads them (absolute, or relative to the current folder)."""
    data = _read_file(path, limit=limits.max_policy_bytes, what="policy file")

    def read_key(name: str) -> bytes:
        return _read_file(Path(name), limit=limits.max_public_key_bytes, what="policy key")

    return parse_policy(data, where=str(path), read_key=read_key, max_bytes=limits.max_policy_bytes)


def parse_command(text: str) -> tuple[str, ...]:
    """A --vet-command as an argument list (split like a POSIX shell would, but
    never run by one): {layout}, {ref} and {digest} are filled in per image."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"--vet-command {text!r}: {exc}") from None
    if not argv:
        raise UsageError("--vet-command is empty")
    return argv


def fill(template: Sequence[str], *, layout: Path, ref: str, digest: str) -> list[str]:
    """The argument list for one image: each placeholder replaced inside the
    argument that holds it, never split into more arguments."""
    values = {"{layout}": str(layout), "{ref}": ref, "{digest}": digest}
    out = []
    for arg in template:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


# -- 1. judge under the policy ------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One spec image under the export-side policy."""

    text: str  # as written in the spec
    image: CollectedImage
    identity: DockerName
    verdict: Verdict

    def describe(self) -> str:
        scope = self.verdict.scope.describe()
        if not self.verdict.accepted:
            return f"REJECTED by {scope}: {'; '.join(self.verdict.reasons)}"
        signers = sorted({c.key.fingerprint for c in self.verdict.verified if c.key is not None})
        by = f", signed by {', '.join(signers)}" if signers else ""
        return f"accepted by {scope}{by}"


def judge_images(
    spec: BundleSpec, images: list[CollectedImage], sources: Sources, policy: ImagePolicy
) -> list[Judged]:
    """Every spec image judged; signatures looked up for a few images at once
    (round trips, not bytes, are their cost)."""
    pairs = list(zip(spec.images, images, strict=True))
    workers = max(1, min(sources.limits.planning_workers, len(pairs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_judge_one, item, img, sources, policy) for item, img in pairs]
        return [f.result() for f in futures]


def _judge_one(
    item: ImageSpec, image: CollectedImage, sources: Sources, policy: ImagePolicy
) -> Judged:
    subject = image.source_digest or image.root.digest
    found: tuple[Found, ...] = ()
    if item.source.transport == "docker":
        # Signatures live where the image is (a mirror holds copies of them).
        source = sources.open_referring(item.source, text=item.text)
        found = find_signatures(source, subject, sources.limits, what=item.text)
    # Judged by the name it carries, as the far side will judge it, and as
    # containers/image judges an image pulled through a mirror: by its name,
    # not by the mirror's location.
    identity = DockerName.of(image.ref)
    verdict = judge(policy, identity, frozenset({subject}), found, what=item.text)
    return Judged(item.text, image, identity, verdict)


def find_signatures(
    source: ReferringSource, subject: Digest, limits: Limits, *, what: str
) -> tuple[Found, ...]:
    """The simple-signing signatures stored for `subject`: in cosign's
    ``sha256-HEX.sig`` tag and in artifacts that refer to it."""
    found: list[Found] = []
    for desc, tag in source.referrers(subject):
        if desc.media_type in INDEX_TYPES:
            continue  # the referrers fallback index: its children are listed too
        where = f"tag {tag}" if tag else f"referrer {desc.digest}"
        try:
            parsed = parse_manifest(
                source.read_manifest(desc), declared_type=desc.media_type, where=where,
                limits=limits,
            )  # fmt: skip
        except FormatError as exc:
            raise SourceError(f"{what}: {exc.message}") from None
        for layer in parsed.blobs[1:]:
            signature = layer.annotations.get(SIGNATURE_ANNOTATION)
            if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE and signature is not None:
                found.append(_payload(source, layer, signature, where, limits))
    return tuple(found)


def _payload(
    source: ReferringSource, layer: Descriptor, signature: str, where: str, limits: Limits
) -> Found:
    """A signature with its payload as served; a payload that does not match
    its descriptor is kept as received: it cannot verify."""
    if layer.size > limits.max_signature_payload_bytes:
        return Found(b"", signature, f"{where} (payload of {layer.size} bytes, too large)")
    data = bytearray()
    for chunk in source.open_blob(layer):
        data += chunk
        if len(data) > layer.size:
            break
    payload = bytes(data)
    if len(payload) != layer.size or Digest.sha256_of(payload) != layer.digest:
        where += " (its payload does not match its digest)"
    return Found(payload, signature, where)


def refuse_rejected(judged: list[Judged], source: str) -> None:
    rejected = [j for j in judged if not j.verdict.accepted]
    if not rejected:
        return
    shown = "; ".join(f"{j.text}: {j.describe()}" for j in rejected[:10])
    more = f" and {len(rejected) - 10} more" if len(rejected) > 10 else ""
    raise VettingError(
        f"the image policy {source} rejects {len(rejected)} image(s): {shown}{more}",
        hint="nothing was written; fix the signatures or the policy, then export again "
        "(signatures are looked up in registries: the sha256-HEX.sig tag and the "
        "referrers; an oci: or docker-archive: source has none)",
    )


# -- 3. vet commands and evidence --------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    command: int
    result: CommandResult
    artifact: ReportArtifact


@dataclass
class Vetted:
    record: VettingRecord
    reports: list[CollectedImage]  # the report artifacts, carried as images
    warnings: list[str]


def vet_images(
    images: list[CollectedImage],
    judged: list[Judged] | None,
    options: VettingOptions,
    workdir: Path,
    *,
    created: str,
    limits: Limits = DEFAULT_LIMITS,
) -> Vetted:
    """Run the vet commands on every image (if any), and the evidence of it
    all; afterwards the images' blobs are read from the vetting store."""
    outcomes: list[list[_Outcome]] = [[] for _ in images]
    warnings: list[str] = []
    if options.commands:
        store = BlobStore(workdir / "vet", limits=limits)
        outcomes = _run_all(images, options, store, workdir / "vet" / "images", created, limits)
        warnings = _failures(images, outcomes, options)
        for image in images:
            image.source = StoreSource(store, image.source)
    evidence = []
    reports = []
    for i, image in enumerate(images):
        artifacts = [_report_image(image, o, options) for o in outcomes[i]]
        reports += artifacts
        evidence.append(_evidence(image, judged[i] if judged else None, outcomes[i], limits))
    record = VettingRecord(
        options.policy.digest if options.policy is not None else None,
        options.commands,
        options.warn,
        tuple(evidence),
    )
    return Vetted(record, reports, warnings)


def _run_all(
    images: list[CollectedImage],
    options: VettingOptions,
    store: BlobStore,
    folder: Path,
    created: str,
    limits: Limits,
) -> list[list[_Outcome]]:
    runner = CommandRunner()
    workers = max(1, min(limits.vet_workers, len(images)))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_vet_one, image, folder / str(i), options, store, runner, created)
                for i, image in enumerate(images)
            ]
            return [f.result() for f in futures]
    except BaseException:
        # Ctrl-C or a failure elsewhere: no scanner is left running.
        runner.kill_all()
        raise


def _vet_one(
    image: CollectedImage,
    folder: Path,
    options: VettingOptions,
    store: BlobStore,
    runner: CommandRunner,
    created: str,
) -> list[_Outcome]:
    blobs = []
    for digest, data in image.documents.items():
        store.put_bytes(digest, data)
        blobs.append(digest)
    for desc in image.blobs:
        store.fetch(desc, image.source)
        blobs.append(desc.digest)
    layout = store.layout(folder, image.ref, image.root, blobs)
    limits = store.limits
    try:
        outcomes = []
        for n, template in enumerate(options.commands):
            argv = fill(template, layout=layout, ref=str(image.ref), digest=str(image.root.digest))
            result = runner.run(
                argv,
                timeout=options.timeout,
                max_stdout=limits.max_vet_report_bytes,
                max_stderr=limits.max_vet_stderr_bytes,
            )
            artifact = report_artifact(
                image.root, result.stdout, command=template, exit_code=result.exit_code,
                created=created,
            )  # fmt: skip
            outcomes.append(_Outcome(n, result, artifact))
        return outcomes
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def _failures(
    images: list[CollectedImage], outcomes: list[list[_Outcome]], options: VettingOptions
) -> list[str]:
    """The failed vets, as warnings with --vet-warn, else the export's end."""
    failed = []
    for image, results in zip(images, outcomes, strict=True):
        for o in results:
            r = o.result
            if r.exit_code == 0 and not r.timed_out:
                continue
            command = shlex.join(options.commands[o.command])
            how = (
                f"did not finish within {options.timeout:g} s"
                if r.timed_out
                else f"exited with {r.exit_code}"
            )
            tail = r.stderr_tail.decode("utf-8", "replace").strip().splitlines()
            said = f" ({tail[-1][:300]!r})" if tail else ""
            failed.append(f"{image.ref}: vet command {command!r} {how}{said}")
    if failed and not options.warn:
        shown = "; ".join(failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise VettingError(
            f"{len(failed)} vet(s) failed: {shown}{more}",
            hint="nothing was written; fix the images, or export with --vet-warn to carry "
            "them with the failure recorded",
        )
    return [f"{f}; recorded in the bundle (--vet-warn)" for f in failed]


def _report_image(
    image: CollectedImage, outcome: _Outcome, options: VettingOptions
) -> CollectedImage:
    artifact = outcome.artifact
    text = f"vet report of {image.ref}: {shlex.join(options.commands[outcome.command])}"
    documents = {
        artifact.digest: artifact.manifest,
        artifact.config.digest: artifact.blob(artifact.config.digest),
        artifact.layer.digest: artifact.report,
    }
    root = artifact.descriptor
    return CollectedImage(
        replace(image.ref, tag=None, digest=artifact.digest),
        text[:1000],
        MemorySource(text, root, documents),
        root,
        (),
        documents={artifact.digest: artifact.manifest},
        blobs=[artifact.config, artifact.layer],
    )


def _evidence(
    image: CollectedImage, judged: Judged | None, outcomes: list[_Outcome], limits: Limits
) -> ImageEvidence:
    signatures: tuple[SignatureEvidence, ...] = ()
    if judged is not None:
        # Verified signatures first: those are the ones kept if there are too many.
        checked = sorted(judged.verdict.checked, key=lambda c: c.key is None)
        signatures = tuple(
            SignatureEvidence(
                c.found.where,
                c.found.payload,
                c.found.signature,
                c.key.fingerprint if c.key else None,
                c.key.kind if c.key else None,
                c.claims.docker_reference if c.claims else None,
                str(c.claims.digest) if c.claims else None,
            )
            for c in checked[: limits.max_image_signatures]
        )
    source_index = None
    if image.source_index is not None:
        children = parse_manifest(image.documents[image.root.digest], declared_type=None,
                                  where=str(image.ref)).children  # fmt: skip
        source_index = SourceIndex(image.source_index, tuple(c.digest for c in children))
    vets = tuple(
        VetRecord(
            o.command,
            o.result.exit_code,
            o.result.timed_out,
            o.artifact.digest,
            o.artifact.layer.digest,
            len(o.result.stdout),
            o.result.stdout_bytes,
        )
        for o in outcomes
    )
    return ImageEvidence(
        image.ref,
        image.root.digest,
        str(judged.identity) if judged is not None else None,
        judged.verdict.scope.describe() if judged is not None else None,
        signatures,
        vets,
        tuple(r.root.digest for r in image.referrers),
        source_index,
    )


# -- the far side --------------------------------------------------------------------


def check_import(
    manifest: BundleManifest,
    policy: ImagePolicy | None,
    *,
    require_vetted: bool,
    source: str,
) -> list[ImageCheck]:
    """Before anything is written: every image the bundle carries judged
    again under this side's policy from the carried signatures, and (asked
    for) found to have passing vet records. Raises VettingError if not."""
    if policy is None and not require_vetted:
        return []
    return check_bundle(
        manifest.images, manifest.vetting, policy, require_vetted=require_vetted, what=source
    )
