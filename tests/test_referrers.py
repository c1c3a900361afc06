"""Artifacts that refer to an image (signatures, SBOMs) travel with it when asked:
the OCI referrers fallback tag and cosign's tags, against a real registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import SourceError, TargetError
from airbundle.format.digest import Digest
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.importer import ImportOptions, import_bundle
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.plan import apply_lock, make_plan, read_lock
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import push_oci_layout, skopeo, skopeo_raw_manifest

EMPTY = b"{}"
ARTIFACT = "application/vnd.dev.sigstore.bundle.v0.3+json"


def _push_artifact(
    client: RegistryClient, repo: str, subject: Digest, size: int, payload: bytes, media_type: str
) -> dict[str, object]:
    for blob in (EMPTY, payload):
        client.upload_blob(repo, Digest.sha256_of(blob), len(blob), [blob])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": ARTIFACT,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(Digest.sha256_of(EMPTY)),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": media_type,
                    "digest": str(Digest.sha256_of(payload)),
                    "size": len(payload),
                }
            ],
            "subject": {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": str(subject),
                "size": size,
            },
        },
        separators=(",", ":"),
    ).encode()
    digest = client.put_manifest(
        repo,
        str(Digest.sha256_of(manifest)),
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    )
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": str(digest),
        "size": len(manifest),
        "artifactType": ARTIFACT,
    }


def test_signatures_and_sboms_travel_with_their_image(
    registry: Registry,
    target_registry: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    index = skopeo_raw_manifest(registry, "team/hello:1.0")
    subject = Digest.sha256_of(index)
    client = RegistryClient(registry.host, Transport(), error=TargetError)
    # OCI 1.1 referrers through the fallback tag (distribution 2.8 has no referrers API).
    sbom = _push_artifact(
        client, "team/hello", subject, len(index), b'{"sbom": 1}', "application/spdx+json"
    )
    fallback = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [sbom],
        },
        separators=(",", ":"),
    ).encode()
    client.put_manifest(
        "team/hello", f"sha256-{subject.hex}", "application/vnd.oci.image.index.v1+json", fallback
    )
    # cosign's own tag scheme.
    sig = _push_artifact(
        client,
        "team/hello",
        subject,
        len(index),
        b"signature",
        "application/vnd.dev.cosign.simplesigning.v1+json",
    )
    raw_sig = skopeo_raw_manifest(registry, f"team/hello@{sig['digest']}")
    client.put_manifest(
        "team/hello",
        f"sha256-{subject.hex}.sig",
        "application/vnd.oci.image.manifest.v1+json",
        raw_sig,
    )

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: r}\n"
        f"images:\n  - ref: {registry.host}/team/hello:1.0\n    referrers: true\n"
    )
    key = (load_signing_key(signing_key.private, passphrase=None),)
    result = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "b.airbundle", keys=key)
    )
    refs = sorted(str(i.ref) for i in result.manifest.images)
    assert refs == sorted(
        [
            f"{registry.host}/team/hello:1.0",
            f"{registry.host}/team/hello:sha256-{subject.hex}",
            f"{registry.host}/team/hello:sha256-{subject.hex}.sig",
            f"{registry.host}/team/hello@{sbom['digest']}",
        ]
    )
    policy = load_policy(load_trust([signing_key.public]), 1)
    import_bundle(
        result.path,
        ImportOptions(
            policy=policy, registry=f"{target_registry.host}/mirror", state_dir=tmp_path / "state"
        ),
    )
    mirrored = "mirror/team/hello"
    assert skopeo_raw_manifest(target_registry, f"{mirrored}:sha256-{subject.hex}") == fallback
    assert skopeo_raw_manifest(target_registry, f"{mirrored}:sha256-{subject.hex}.sig") == raw_sig
    got = skopeo_raw_manifest(target_registry, f"{mirrored}@{sbom['digest']}")
    assert "sha256:" + hashlib.sha256(got).hexdigest() == sbom["digest"]


def test_without_referrers_only_the_image_travels(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: r}\n"
        f"images:\n  - ref: {registry.host}/team/hello:1.0\n"
    )
    key = (load_signing_key(signing_key.private, passphrase=None),)
    result = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "b.airbundle", keys=key)
    )
    assert len(result.manifest.images) == 1


def test_a_lock_carries_exactly_the_referrers_found_at_plan_time(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    index = skopeo_raw_manifest(registry, "team/hello:1.0")
    subject = Digest.sha256_of(index)
    client = RegistryClient(registry.host, Transport(), error=TargetError)
    sig = _push_artifact(
        client, "team/hello", subject, len(index), b"reviewed signature",
        "application/vnd.dev.cosign.simplesigning.v1+json",
    )  # fmt: skip
    raw_sig = skopeo_raw_manifest(registry, f"team/hello@{sig['digest']}")
    sig_tag = f"sha256-{subject.hex}.sig"
    client.put_manifest(
        "team/hello", sig_tag, "application/vnd.oci.image.manifest.v1+json", raw_sig
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: r}\n"
        f"images:\n  - ref: {registry.host}/team/hello:1.0\n    referrers: true\n"
    )
    plan = make_plan(load_spec(spec), cache_dir=tmp_path / "cache")
    (planned,) = plan.images
    assert planned.referrers == ((sig["digest"], sig_tag),)
    assert planned.size > len(index) + len(raw_sig)  # the referrer's bytes count too
    lock = tmp_path / "spec.lock"
    lock.write_bytes(plan.lock_bytes())

    # After the review, someone attaches an SBOM nobody reviewed.
    sbom = _push_artifact(
        client, "team/hello", subject, len(index), b'{"sbom": 2}', "application/spdx+json"
    )
    fallback = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [sbom]},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    client.put_manifest(
        "team/hello", f"sha256-{subject.hex}", "application/vnd.oci.image.index.v1+json", fallback
    )

    key = (load_signing_key(signing_key.private, passphrase=None),)
    locked = apply_lock(load_spec(spec), read_lock(lock))
    result = export_bundle(locked, ExportOptions(output=tmp_path / "b.airbundle", keys=key))
    assert sorted(str(i.ref) for i in result.manifest.images) == sorted(
        [f"{registry.host}/team/hello:1.0", f"{registry.host}/team/hello:{sig_tag}"]
    )
    assert {str(i.digest) for i in result.manifest.images} == {str(subject), sig["digest"]}

    # A pinned referrer the registry lost is an error, not a silent omission.
    skopeo(["delete", "--tls-verify=false", f"docker://{registry.host}/team/hello@{sig['digest']}"],
           registry=registry)  # fmt: skip
    with pytest.raises(SourceError, match=f"pins referrer {sig['digest']}"):
        export_bundle(
            apply_lock(load_spec(spec), read_lock(lock)),
            ExportOptions(output=tmp_path / "c.airbundle", keys=key),
        )
    assert not (tmp_path / "c.airbundle").exists()
