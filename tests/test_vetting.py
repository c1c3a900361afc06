"""The vetting gate against a real registry: upstream sigstore signatures judged
under a containers-policy.json on export, vet commands run on every image, the
evidence carried in the signed manifest and judged again on import.

Signatures are made by tests/support/sigstore_signer.py (openssl, hand-written
payloads, plain HTTP pushes), never by the code that verifies them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airbundle.errors import EXIT_INTEGRITY, EXIT_USAGE
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest
from airbundle.ops.keys import load_signing_key
from support.crafting import read_parts, write_bundle
from support.env import hermetic
from support.keys import KeyPair
from support.registry import Registry
from support.sigstore_signer import (
    KINDS,
    Signature,
    SigningKey,
    attach,
    make_key,
    signature,
)
from support.skopeo import push_oci_layout, skopeo_raw_manifest

REPO = "team/hello"
REJECT = [{"type": "reject"}]
ACCEPT = [{"type": "insecureAcceptAnything"}]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    folder = tmp_path_factory.mktemp("sigstore-keys")
    made = {kind: make_key(folder, kind) for kind in KINDS}
    made["other"] = make_key(folder, "ecdsa-p256", "other")
    return made


@dataclass(frozen=True)
class Upstream:
    registry: Registry
    ref: str  # host/team/hello:1.0, a two-platform index
    digest: str
    size: int
    other_digest: str  # team/hello:0.9, another image

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def repository(self) -> str:
        return f"{self.host}/{REPO}"


@pytest.fixture
def upstream(
    registry: Registry, hello_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Upstream:
    hermetic(monkeypatch, tmp_path / "env")
    push_oci_layout(registry, hello_layout, "1.0", f"{REPO}:1.0")
    push_oci_layout(registry, hello_layout, "0.9", f"{REPO}:0.9", all_platforms=False)
    index = skopeo_raw_manifest(registry, f"{REPO}:1.0")
    other = skopeo_raw_manifest(registry, f"{REPO}:0.9")
    return Upstream(
        registry,
        f"{registry.host}/{REPO}:1.0",
        str(Digest.sha256_of(index)),
        len(index),
        str(Digest.sha256_of(other)),
    )


def sign_upstream(
    up: Upstream, key: SigningKey, *, identity: str | None = None, digest: str | None = None,
    mode: str = "tag",
) -> Signature:  # fmt: skip
    sig = signature(key, identity or up.ref, digest or up.digest)
    attach(up.host, REPO, up.digest, [sig], subject_size=up.size, mode=mode)
    return sig


def sigstore(key: SigningKey, identity: dict[str, str] | None = None, *, data: bool = False) -> Any:
    req: dict[str, Any] = {"type": "sigstoreSigned"}
    if data:
        req["keyData"] = key.key_data
    else:
        req["keyPath"] = str(key.public)
    if identity is not None:
        req["signedIdentity"] = identity
    return req


def write_policy(path: Path, scopes: dict[str, list[Any]], default: list[Any] = REJECT) -> Path:
    path.write_text(json.dumps({"default": default, "transports": {"docker": scopes}}, indent=1))
    return path


def write_spec(folder: Path, *refs: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    images = "".join(f"  - ref: {r}\n{extra}" for r in refs)
    spec.write_text(
        f"apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {{name: v}}\nimages:\n{images}"
    )
    return spec


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airbundle", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def export(spec: Path, out: Path, key: KeyPair, *args: object) -> subprocess.CompletedProcess[str]:
    return cli("export", spec, "-o", out, "--key", key.private, *args)


def inspect_json(bundle: Path) -> dict[str, Any]:
    proc = cli("inspect", bundle, "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("airbundle: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def import_into(
    bundle: Path, key: KeyPair, target: Path, *args: object
) -> subprocess.CompletedProcess[str]:
    return cli(
        "import", bundle, "--trust", key.public, "--registry", f"oci:{target}",
        "--state-dir", target.parent / "state", *args,
    )  # fmt: skip


def layout_refs(target: Path) -> set[str]:
    index = json.loads((target / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}


# -- signatures judged on export, and again on import -------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_signed_image_is_accepted_and_the_far_side_accepts_it_again(
    kind: str, upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair,
    tmp_path: Path,
) -> None:  # fmt: skip
    key = keys[kind]
    sig = sign_upstream(upstream, key)
    policy = write_policy(tmp_path / "policy.json", {upstream.repository: [sigstore(key)]})
    spec = write_spec(tmp_path / "s", upstream.ref)
    out = tmp_path / "b.airbundle"
    proc = export(spec, out, signing_key, "--policy", policy)
    assert proc.returncode == 0, proc.stderr

    vetting = inspect_json(out)["vetting"]
    (evidence,) = vetting["images"]
    assert evidence["ref"] == upstream.ref and evidence["digest"] == upstream.digest
    assert evidence["scope"] == f'transports.docker["{upstream.repository}"]'
    (carried,) = evidence["signatures"]
    assert carried["where"] == f"tag sha256-{upstream.digest[7:]}.sig"
    assert base64.b64decode(carried["payload"]) == sig.payload
    assert carried["signature"] == sig.signature
    # The fingerprint as openssl computes it, not as airbundle does.
    assert carried["verified"] == {
        "keyFingerprint": key.fingerprint,
        "keyType": kind,
        "identity": upstream.ref,
        "digest": upstream.digest,
    }
    assert vetting["policy"] == str(Digest.sha256_of(policy.read_bytes()))
    shown = cli("inspect", out).stdout
    assert f"verified: key {key.fingerprint} ({kind}), identity {upstream.ref}" in shown

    # The far side: its own policy file, the key given inline (keyData).
    far = write_policy(tmp_path / "far.json", {upstream.host: [sigstore(key, data=True)]})
    target = tmp_path / "far" / "images"
    proc = import_into(out, signing_key, target, "--policy", far)
    assert proc.returncode == 0, proc.stderr
    assert upstream.ref in layout_refs(target)
    report = json.loads((target / "airbundle-import.json").read_text())
    assert report["vetting"] == [
        {
            "ref": upstream.ref,
            "digest": upstream.digest,
            "scope": f'transports.docker["{upstream.host}"]',
            "signers": [key.fingerprint],
        }
    ]


def test_a_signature_found_through_the_referrers_fallback_tag_is_accepted(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    key = keys["ed25519"]
    sign_upstream(upstream, key, mode="referrer")
    policy = write_policy(tmp_path / "policy.json", {upstream.repository: [sigstore(key)]})
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == 0, proc.stderr
    (carried,) = inspect_json(out)["vetting"]["images"][0]["signatures"]
    assert carried["where"].startswith("referrer sha256:")
    assert carried["verified"]["keyFingerprint"] == key.fingerprint


def test_an_unsigned_image_in_a_sigstore_scope_fails_the_export_naming_image_and_scope(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path / "policy.json", {upstream.repository: [sigstore(keys["rsa-2048"])]}
    )
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_INTEGRITY
    message = error(proc)
    assert upstream.ref in message
    assert f'transports.docker["{upstream.repository}"]' in message
    assert "no signature exists" in message
    assert not out.exists() and not list(tmp_path.glob(".airbundle-tmp-*"))


def test_a_signature_by_another_key_is_refused(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    sign_upstream(upstream, keys["other"])
    policy = write_policy(
        tmp_path / "p.json", {upstream.repository: [sigstore(keys["ecdsa-p256"])]}
    )
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_INTEGRITY
    assert f"does not verify with key {keys['ecdsa-p256'].fingerprint}" in error(proc)
    assert not out.exists()


def test_a_signature_over_another_digest_is_refused(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    key = keys["ecdsa-p256"]
    sign_upstream(upstream, key, digest=upstream.other_digest)
    policy = write_policy(tmp_path / "p.json", {upstream.repository: [sigstore(key)]})
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_INTEGRITY
    assert f"the signature is for digest {upstream.other_digest}, not this image's" in error(proc)


def test_a_reject_scope_refuses_and_plan_reports_it_before_any_download(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    other = f"{upstream.repository}:0.9"
    policy = write_policy(tmp_path / "p.json", {other: REJECT}, default=ACCEPT)
    spec = write_spec(tmp_path / "s", upstream.ref, other)
    proc = cli("plan", spec, "--policy", policy, "--no-cache")
    assert proc.returncode == EXIT_INTEGRITY
    assert f'REJECTED by transports.docker["{other}"]: the scope rejects every image' in proc.stdout
    assert "accepted by default" in proc.stdout
    assert f"would reject 1 image(s): {other}" in error(proc)
    assert not (tmp_path / "s" / "spec.yaml.lock").exists()
    out = tmp_path / "b.airbundle"
    proc = export(spec, out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_INTEGRITY and other in error(proc)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["payload blob", "signature annotation"])
def test_a_corrupted_signature_is_refused(
    damage: str, upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair,
    tmp_path: Path,
) -> None:  # fmt: skip
    key = keys["ecdsa-p256"]
    if damage == "payload blob":
        sig = sign_upstream(upstream, key)
        # Flip a byte of the stored payload where the registry keeps it.
        data = upstream.registry.storage / "docker/registry/v2/blobs/sha256"
        (stored,) = data.glob(f"*/{Digest.sha256_of(sig.payload).hex}/data")
        stored.write_bytes(sig.payload.replace(b"hello", b"jello"))
        expected = "its payload does not match its digest"
    else:
        good = signature(key, upstream.ref, upstream.digest)
        raw = bytearray(base64.b64decode(good.signature))
        raw[10] ^= 0xFF
        bad = Signature(good.payload, base64.b64encode(bytes(raw)).decode())
        attach(upstream.host, REPO, upstream.digest, [bad], subject_size=upstream.size)
        expected = "does not verify"
    policy = write_policy(tmp_path / "p.json", {upstream.repository: [sigstore(key)]})
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_INTEGRITY
    assert expected in error(proc)
    assert not out.exists()


def test_one_good_signature_among_bad_ones_is_enough_and_all_are_carried(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    key = keys["ecdsa-p256"]
    bad = signature(keys["other"], upstream.ref, upstream.digest)
    good = signature(key, upstream.ref, upstream.digest)
    attach(upstream.host, REPO, upstream.digest, [bad, good], subject_size=upstream.size)
    policy = write_policy(tmp_path / "p.json", {upstream.repository: [sigstore(key)]})
    out = tmp_path / "b.airbundle"
    proc = export(write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy)
    assert proc.returncode == 0, proc.stderr
    carried = inspect_json(out)["vetting"]["images"][0]["signatures"]
    assert [c["verified"] is not None for c in carried] == [True, False]
    # The far side trusts only the other key: that signature travelled too.
    far = write_policy(tmp_path / "far.json", {upstream.host: [sigstore(keys["other"])]})
    target = tmp_path / "far" / "images"
    assert import_into(out, signing_key, target, "--policy", far).returncode == 0


@pytest.mark.parametrize(
    ("requirement", "where"),
    [
        ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent.gpg"}, "signedBy"),
        (
            {
                "type": "sigstoreSigned",
                "fulcio": {"caPath": "/x", "oidcIssuer": "https://i", "subjectEmail": "a@b"},
                "rekorPublicKeyPath": "/y",
            },
            "fulcio",
        ),
    ],
)
def test_an_unsupported_requirement_is_an_error_never_accepted(
    requirement: dict[str, Any], where: str, upstream: Upstream, signing_key: KeyPair,
    tmp_path: Path,
) -> None:  # fmt: skip
    scopes = {upstream.repository: [requirement], "elsewhere.example": [requirement]}
    policy = write_policy(tmp_path / "p.json", scopes, default=ACCEPT)
    out = tmp_path / "b.airbundle"
    spec = write_spec(tmp_path / "s", upstream.ref)
    proc = export(spec, out, signing_key, "--policy", policy)
    assert proc.returncode == EXIT_USAGE
    message = error(proc)
    assert upstream.ref in message and f'transports.docker["{upstream.repository}"]' in message
    assert where in message
    assert not out.exists()
    # In a scope no image falls into, it stops nothing.
    policy = write_policy(
        tmp_path / "p2.json", {"elsewhere.example": [requirement]}, default=ACCEPT
    )
    assert export(spec, out, signing_key, "--policy", policy).returncode == 0


# -- signedIdentity, each type accepting and refusing --------------------------------


def _identities(up: Upstream) -> list[tuple[str, dict[str, str] | None, str, bool]]:
    """(name, signedIdentity, identity the signature claims, accepted?)"""
    repo, ref = up.repository, up.ref
    return [
        ("matchRepoDigestOrExact-default", None, ref, True),
        ("matchRepoDigestOrExact-default", None, f"{repo}:2.0", False),
        ("matchRepoDigestOrExact-cosign", None, repo, False),  # cosign signs the repository only
        ("matchExact", {"type": "matchExact"}, ref, True),
        ("matchExact", {"type": "matchExact"}, f"{repo}:latest", False),
        ("matchRepository", {"type": "matchRepository"}, repo, True),
        ("matchRepository", {"type": "matchRepository"}, f"{up.host}/team/other", False),
        ("exactReference", {"type": "exactReference", "dockerReference": "vendor.example/app:7"},
         "vendor.example/app:7", True),
        ("exactReference", {"type": "exactReference", "dockerReference": "vendor.example/app:7"},
         ref, False),
        ("exactRepository", {"type": "exactRepository", "dockerRepository": "vendor.example/app"},
         "vendor.example/app:9", True),
        ("exactRepository", {"type": "exactRepository", "dockerRepository": "vendor.example/app"},
         "vendor.example/other:9", False),
        ("remapIdentity", {"type": "remapIdentity", "prefix": f"{up.host}/team",
                           "signedPrefix": "vendor.example/products"},
         "vendor.example/products/hello:1.0", True),
        ("remapIdentity", {"type": "remapIdentity", "prefix": f"{up.host}/team",
                           "signedPrefix": "vendor.example/products"},
         ref, False),
    ]  # fmt: skip


def test_each_signed_identity_type_accepts_and_refuses_as_containers_image_does(
    upstream: Upstream, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    from airbundle.ops.plan import make_plan
    from airbundle.ops.specfile import load_spec
    from airbundle.ops.vetting import load_image_policy

    key = keys["ecdsa-p256"]
    spec = load_spec(write_spec(tmp_path / "s", upstream.ref))
    for n, (name, identity, claimed, accepted) in enumerate(_identities(upstream)):
        # Each case on a fresh signature tag: the last one written is the only one.
        sign_upstream(upstream, key, identity=claimed)
        policy = load_image_policy(
            write_policy(tmp_path / f"p{n}.json", {upstream.repository: [sigstore(key, identity)]})
        )
        (planned,) = make_plan(spec, policy=policy).images
        assert planned.accepted is accepted, (name, claimed, planned.policy)
        assert planned.policy is not None
        if not accepted:
            assert f"signed identity {claimed!r} is not accepted" in planned.policy, name


# -- vet commands ---------------------------------------------------------------------


SCRIPT = """\
import json, os, sys
layout, ref, digest = sys.argv[1:4]
index = json.load(open(os.path.join(layout, "index.json")))
(root,) = index["manifests"]
assert root["digest"] == digest, (root, digest)
blobs = sorted(os.listdir(os.path.join(layout, "blobs", "sha256")))
print(json.dumps({"argv": sys.argv[1:], "blobs": blobs, "ref": ref}))
"""


def test_a_passing_vet_command_gets_its_own_layout_and_its_report_travels(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    script = tmp_path / "scan.py"
    script.write_text(SCRIPT)
    out = tmp_path / "b.airbundle"
    spec = write_spec(tmp_path / "s", upstream.ref)
    # skopeo, an independent reader, must find the image in the layout too.
    command = f"{sys.executable} {script} {{layout}} {{ref}} {{digest}} 'a b;c'"
    proc = export(
        spec, out, signing_key, "--vet-command", command,
        "--vet-command", "skopeo --insecure-policy inspect --raw oci:{layout}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = inspect_json(out)
    (evidence,) = doc["vetting"]["images"]
    assert evidence["scope"] is None and evidence["signatures"] == []
    assert [v["exitCode"] for v in evidence["vets"]] == [0, 0]
    reports = {i["digest"]: i for i in doc["images"]}
    assert all(v["report"] in reports for v in evidence["vets"])
    # The reports travel as artifacts that refer to the image; import them.
    target = tmp_path / "far" / "images"
    assert import_into(out, signing_key, target, "--require-vetted").returncode == 0
    first, second = evidence["vets"]
    written = json.loads((target / "blobs" / "sha256" / first["reportBlob"][7:]).read_text())
    # Each placeholder one argument, 'a b;c' one more: no shell ran.
    assert written["argv"][1:] == [upstream.ref, upstream.digest, "a b;c"]
    assert written["ref"] == upstream.ref and len(written["blobs"]) >= 5
    raw = (target / "blobs" / "sha256" / second["reportBlob"][7:]).read_bytes()
    assert Digest.sha256_of(raw) == Digest.parse(upstream.digest)
    artifact = json.loads((target / "blobs" / "sha256" / first["report"][7:]).read_text())
    assert artifact["subject"]["digest"] == upstream.digest
    assert artifact["artifactType"] == "application/vnd.airbundle.vet-report.v1"
    # The command as written (placeholders, not this run's temporary paths).
    recorded = json.loads(artifact["annotations"]["dev.airbundle.vet.command"])
    assert recorded == [sys.executable, str(script), "{layout}", "{ref}", "{digest}", "a b;c"]


def test_a_failing_vet_command_fails_the_export_unless_vet_warn_records_it(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "s", upstream.ref)
    out = tmp_path / "b.airbundle"
    failing = "sh -c 'echo report; echo CVE-2024-0001 found >&2; exit 3'"
    proc = export(spec, out, signing_key, "--vet-command", failing)
    assert proc.returncode == EXIT_INTEGRITY
    message = error(proc)
    assert upstream.ref in message and "exited with 3" in message and "CVE-2024-0001" in message
    assert not out.exists()

    proc = export(spec, out, signing_key, "--vet-command", failing, "--vet-warn")
    assert proc.returncode == 0, proc.stderr
    assert "airbundle: warning:" in proc.stderr and "exited with 3" in proc.stderr
    vetting = inspect_json(out)["vetting"]
    assert vetting["warnOnly"] is True
    assert vetting["images"][0]["vets"][0]["exitCode"] == 3
    assert "vet 0: failed (exit 3)" in cli("inspect", out).stdout

    target = tmp_path / "far" / "images"
    proc = import_into(out, signing_key, target, "--require-vetted")
    assert proc.returncode == EXIT_INTEGRITY
    assert "vet command" in error(proc) and "failed (exit 3)" in error(proc)
    assert not target.exists() and not (tmp_path / "far" / "state").exists()
    assert import_into(out, signing_key, target).returncode == 0


def _running_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_a_hanging_vet_command_fails_at_the_timeout_and_leaves_nothing_running(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    marker = f"vet-hang-{os.getpid()}"
    out = tmp_path / "b.airbundle"
    command = f"sh -c 'sleep 600 & sleep 600; : {marker}' {marker}"
    proc = export(
        write_spec(tmp_path / "s", upstream.ref), out, signing_key,
        "--vet-command", command, "--vet-timeout", "2s",
    )  # fmt: skip
    assert proc.returncode == EXIT_INTEGRITY
    assert "did not finish within 2 s" in error(proc) and upstream.ref in error(proc)
    assert not out.exists()
    assert _running_with(marker) == []


def test_a_vet_command_that_prints_megabytes_is_cut_and_says_so(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b.airbundle"
    command = f"{sys.executable} -c \"import sys; sys.stdout.write('x' * (24 << 20))\""
    proc = export(
        write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--vet-command", command
    )
    assert proc.returncode == 0, proc.stderr
    (vet,) = inspect_json(out)["vetting"]["images"][0]["vets"]
    assert vet["reportSize"] == 1 << 20 and vet["outputBytes"] == 24 << 20
    assert "(1.0 MiB, cut from 24.0 MiB)" in cli("inspect", out).stdout
    members = dict(read_parts(out).members)
    assert members[f"images/blobs/sha256/{vet['reportBlob'][7:]}"] == b"x" * (1 << 20)


def test_a_vet_command_that_cannot_run_is_a_usage_error(
    upstream: Upstream, signing_key: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b.airbundle"
    proc = export(
        write_spec(tmp_path / "s", upstream.ref), out, signing_key,
        "--vet-command", "no-such-scanner {layout}", "--vet-warn",
    )  # fmt: skip
    assert proc.returncode == EXIT_USAGE
    assert "cannot run 'no-such-scanner'" in error(proc)
    assert not out.exists()


# -- the far side: evidence removed or altered by the producer -----------------------


@pytest.fixture
def vetted_bundle(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> Path:
    sign_upstream(upstream, keys["ecdsa-p256"])
    policy = write_policy(
        tmp_path / "p.json", {upstream.repository: [sigstore(keys["ecdsa-p256"])]}
    )
    out = tmp_path / "good.airbundle"
    proc = export(
        write_spec(tmp_path / "s", upstream.ref), out, signing_key, "--policy", policy,
        "--vet-command", "true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def _reissue(bundle: Path, out: Path, key: KeyPair, change: Any) -> Path:
    """The producer rewrites its own manifest and signs it again: the bundle
    signature is valid, the evidence is what the producer wants."""
    parts = read_parts(bundle)
    doc = json.loads(parts.manifest)
    change(doc["vetting"]["images"][0])
    manifest = BundleManifest.from_bytes(json.dumps(doc).encode())
    private = load_signing_key(key.private, passphrase=None)
    return write_bundle(out, manifest, [], parts.members, keys=[private])


def _alter_identity(evidence: dict[str, Any]) -> None:
    claims = json.loads(base64.b64decode(evidence["signatures"][0]["payload"]))
    claims["critical"]["identity"]["docker-reference"] = evidence["ref"].replace("1.0", "2.0")
    evidence["signatures"][0]["payload"] = base64.b64encode(json.dumps(claims).encode()).decode()


def _alter_signature(evidence: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(evidence["signatures"][0]["signature"]))
    raw[-1] ^= 0x01
    evidence["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e.update(signatures=[]), "no signature exists"),
        (_alter_identity, "does not verify"),
        (_alter_signature, "does not verify"),
        (lambda e: e.update(vets=[]), "no vet record"),
    ],
    ids=["signature-removed", "payload-altered", "signature-altered", "vet-record-removed"],
)  # fmt: skip
def test_import_refuses_evidence_the_producer_removed_or_altered_and_writes_nothing(
    change: Any, reason: str, vetted_bundle: Path, upstream: Upstream,
    keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path,
) -> None:  # fmt: skip
    far = write_policy(tmp_path / "far.json", {upstream.host: [sigstore(keys["ecdsa-p256"])]})
    target = tmp_path / "far" / "images"
    # The genuine bundle passes both checks.
    ok = import_into(vetted_bundle, signing_key, tmp_path / "ok" / "images", "--policy", far,
                     "--require-vetted")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    forged = _reissue(vetted_bundle, tmp_path / "forged.airbundle", signing_key, change)
    assert cli("verify", forged, "--trust", signing_key.public).returncode == 0
    proc = import_into(forged, signing_key, target, "--policy", far, "--require-vetted")
    assert proc.returncode == EXIT_INTEGRITY
    message = error(proc)
    assert upstream.ref in message and reason in message
    assert not target.exists() and not (tmp_path / "far" / "state").exists()


def test_import_refuses_an_unsigned_image_the_producer_added(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    """A bundle exported without --policy carries no evidence: under a far-side
    sigstoreSigned scope each of its images is refused, not waved through."""
    out = tmp_path / "b.airbundle"
    assert export(write_spec(tmp_path / "s", upstream.ref), out, signing_key).returncode == 0
    far = write_policy(tmp_path / "far.json", {upstream.host: [sigstore(keys["ecdsa-p256"])]})
    target = tmp_path / "far" / "images"
    proc = import_into(out, signing_key, target, "--policy", far)
    assert proc.returncode == EXIT_INTEGRITY
    assert "no signature exists" in error(proc)
    assert not target.exists()


def test_a_platform_subset_is_accepted_on_both_sides_only_as_derived_from_the_signed_index(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    """The signature covers the source's index; the bundle carries a smaller one.
    The evidence carries the signed index so that the far side can rebuild the
    carried one from it; a producer who changes what was kept is refused."""
    key = keys["ecdsa-p256"]
    sign_upstream(upstream, key)
    policy = write_policy(tmp_path / "p.json", {upstream.repository: [sigstore(key)]})
    spec = write_spec(tmp_path / "s", upstream.ref, extra="    platforms: [linux/amd64]\n")
    out = tmp_path / "b.airbundle"
    proc = export(spec, out, signing_key, "--policy", policy)
    assert proc.returncode == 0, proc.stderr
    doc = inspect_json(out)
    (image,) = doc["images"]
    assert image["sourceDigest"] == upstream.digest and image["digest"] != upstream.digest
    (evidence,) = doc["vetting"]["images"]
    source = base64.b64decode(evidence["sourceIndex"]["data"])
    assert str(Digest.sha256_of(source)) == upstream.digest
    assert len(evidence["sourceIndex"]["children"]) == 1
    far = write_policy(tmp_path / "far.json", {upstream.host: [sigstore(key)]})
    accepted = import_into(out, signing_key, tmp_path / "ok" / "images", "--policy", far)
    assert accepted.returncode == 0, accepted.stderr

    everything = [m["digest"] for m in json.loads(source)["manifests"]]
    forged = _reissue(
        out, tmp_path / "forged.airbundle", signing_key,
        lambda e: e["sourceIndex"].update(children=everything),
    )  # fmt: skip
    target = tmp_path / "far" / "images"
    proc = import_into(forged, signing_key, target, "--policy", far)
    assert proc.returncode == EXIT_INTEGRITY
    assert "the carried index is not a subset of the signed one" in error(proc)
    assert not target.exists()


def test_an_image_from_a_mirror_is_judged_by_the_name_it_carries(
    upstream: Upstream, keys: dict[str, SigningKey], signing_key: KeyPair, tmp_path: Path
) -> None:
    """A private mirror holds the vendor's image and its signature (signed for
    the vendor's name); the spec carries it under that name: the policy's scope
    for the vendor applies, as containers/image applies it through a mirror."""
    key = keys["ed25519"]
    vendor = "vendor.example/products/hello:1.0"
    sign_upstream(upstream, key, identity=vendor)
    policy = write_policy(tmp_path / "p.json", {"vendor.example": [sigstore(key)]})
    spec = write_spec(tmp_path / "s", upstream.ref, extra=f"    name: {vendor}\n")
    out = tmp_path / "b.airbundle"
    proc = export(spec, out, signing_key, "--policy", policy)
    assert proc.returncode == 0, proc.stderr
    (evidence,) = inspect_json(out)["vetting"]["images"]
    assert (evidence["ref"], evidence["identity"]) == (vendor, vendor)
    assert evidence["scope"] == 'transports.docker["vendor.example"]'
    assert evidence["signatures"][0]["verified"]["identity"] == vendor
