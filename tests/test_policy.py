"""containers-policy.json and sigstore payloads, without servers: scope lookup
as containers/image does it, the parser's strictness, the payload's
strictness, and hostile input. Signatures come from the openssl-based test
signer (tests/support/sigstore_signer.py)."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from airbundle.errors import PolicyError, SignatureCheckError
from airbundle.format.digest import Digest
from airbundle.format.policy import (
    DockerName,
    Found,
    ImagePolicy,
    Reject,
    SigstoreSigned,
    Unsupported,
    judge,
    parse_policy,
)
from airbundle.format.reference import ImageReference
from airbundle.format.simplesigning import parse_payload
from support.sigstore_signer import SigningKey, make_key, payload

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
LIMIT = 1 << 20


def parse(doc: Any, keys: dict[str, bytes] | None = None) -> ImagePolicy:
    def read_key(name: str) -> bytes:
        assert keys is not None and name in keys, name
        return keys[name]

    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_policy(data, where="policy.json", read_key=read_key, max_bytes=LIMIT)


def named(*names: str) -> dict[str, Any]:
    """A policy with these docker scopes (each accepting anything), default reject."""
    return {
        "default": [{"type": "reject"}],
        "transports": {"docker": {n: [{"type": "insecureAcceptAnything"}] for n in names}},
    }


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_key(tmp_path_factory.mktemp("k"), "ecdsa-p256")


# -- scope lookup ---------------------------------------------------------------------

SCOPES = [
    "reg.example.com:5000/ns/app:1",
    "reg.example.com:5000/ns/app",
    "reg.example.com:5000/ns",
    "reg.example.com:5000",
    "*.example.com",
    "*.com",
    "",
]


@pytest.mark.parametrize("present", range(len(SCOPES)))
def test_the_most_specific_scope_applies(present: int) -> None:
    """Each scope in turn is the most specific present: it must be the one chosen
    (identity, repository, namespaces, host, wildcards with the port dropped,
    then the transport default), as DockerReferenceNamespaces orders them."""
    policy = parse(named(*SCOPES[present:]))
    image = DockerName.of(ImageReference.parse("reg.example.com:5000/ns/app:1"))
    scope = policy.scope_for(image)
    assert scope.name == SCOPES[present]
    assert scope.describe() == f'transports.docker["{SCOPES[present]}"]'


def test_without_a_docker_scope_the_global_default_applies() -> None:
    policy = parse({"default": [{"type": "reject"}], "transports": {"docker": {"x.io/a": [
        {"type": "insecureAcceptAnything"}]}}})  # fmt: skip
    scope = policy.scope_for(DockerName.of(ImageReference.parse("busybox")))
    assert (scope.describe(), scope.requirements) == ("default", (Reject(),))


def test_docker_hub_names_are_looked_up_fully_expanded() -> None:
    image = DockerName.of(ImageReference.parse("busybox"))
    assert image.policy_identity() == "docker.io/library/busybox:latest"
    assert image.namespaces() == ["docker.io/library/busybox", "docker.io/library", "docker.io",
                                  "*.io"]  # fmt: skip
    assert parse(named("busybox", "docker.io/library")).scope_for(image).name == "docker.io/library"


def test_a_tag_names_the_image_even_when_a_digest_pins_it() -> None:
    ref = ImageReference.parse(f"reg.example.com/ns/app:1@{DIGEST}")
    assert DockerName.of(ref).policy_identity() == "reg.example.com/ns/app:1"
    by_digest = DockerName.of(ImageReference.parse(f"reg.example.com/ns/app@{DIGEST}"))
    assert by_digest.policy_identity() == f"reg.example.com/ns/app@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "name_only", "shown"),
    [
        ("reg.example.com:5000/ns/app", True, "reg.example.com:5000/ns/app"),
        ("reg.example.com:5000/ns/app:7", False, "reg.example.com:5000/ns/app:7"),
        ("busybox", True, "docker.io/library/busybox"),
        (f"busybox@{DIGEST}", False, f"docker.io/library/busybox@{DIGEST}"),
    ],
)
def test_signed_identities_may_name_a_repository_only(
    text: str, name_only: bool, shown: str
) -> None:
    parsed = DockerName.parse(text)
    assert parsed is not None and parsed.name_only is name_only and str(parsed) == shown


# -- parsing: as strict as containers/image -------------------------------------------


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({}, "member 'default' is required"),
        ({"default": []}, "non-empty list"),
        ({"default": [{"type": "reject"}], "extra": 1}, "unknown member 'extra'"),
        ({"default": [{"type": "reject", "x": 1}]}, "unknown member 'x'"),
        ({"default": [{"type": "trustMe"}]}, "unknown requirement type 'trustMe'"),
        ({"default": [{"type": "sigstoreSigned"}]}, "exactly one of keyPath"),
        ({"default": [{"type": "sigstoreSigned", "keyData": "!!"}]}, "is not base64"),
        ({"default": [{"type": "sigstoreSigned", "keyData": base64.b64encode(b"junk").decode()}]},
         "not a PEM public key"),
        ({"default": [{"type": "sigstoreSigned", "keyPaths": []}]}, "non-empty list"),
        ({"default": [{"type": "sigstoreSigned", "fulcio": {}}]}, "needs a Rekor public key"),
        ({"default": [{"type": "reject"}], "transports": {"atomic": {"h/x": [{"type": "nope"}]}}},
         "transports.atomic[\"h/x\"][0]: unknown requirement type 'nope'"),
        ({"default": [{"type": "reject"}], "transports": {"docker": {"x.io": []}}},
         'transports.docker["x.io"]: must be a non-empty list'),
        (b'{"default": [{"type": "reject"}], "default": []}', "duplicate key 'default'"),
        (b'[1, 2]', "(top level): must be a JSON object"),
    ],
)  # fmt: skip
def test_a_malformed_policy_is_refused_whole(doc: Any, problem: str) -> None:
    with pytest.raises(PolicyError, match=r"policy\.json") as info:
        parse(doc)
    assert problem in info.value.message


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        ({"type": "matchEverything"}, "unknown signedIdentity type"),
        ({"type": "matchExact", "dockerReference": "a.io/b:1"}, "unknown member"),
        ({"type": "exactReference", "dockerReference": "a.io/b"}, "with a tag or digest"),
        ({"type": "exactReference"}, "member 'dockerReference' is required"),
        ({"type": "remapIdentity", "prefix": "a.io/b:1", "signedPrefix": "c.io"},
         "not host[:port] or a fully expanded"),
        ({"type": "remapIdentity", "prefix": "a.io/B", "signedPrefix": "c.io"},
         "not host[:port] or a fully expanded"),
    ],
)  # fmt: skip
def test_a_malformed_signed_identity_is_refused(
    identity: dict[str, Any], problem: str, key: SigningKey
) -> None:
    doc = {"default": [{"type": "sigstoreSigned", "keyData": key.key_data,
                        "signedIdentity": identity}]}  # fmt: skip
    with pytest.raises(PolicyError) as info:
        parse(doc)
    assert problem in info.value.message


def _pem(private: Any) -> bytes:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: dsa.generate_private_key(2048), "DSAPublicKey keys are not supported"),
        (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),  # noqa: S505
    ],
)
def test_keys_of_other_kinds_or_too_weak_are_refused(make: Any, problem: str) -> None:
    doc = {"default": [{"type": "sigstoreSigned", "keyPath": "/k.pub"}]}
    with pytest.raises(PolicyError) as info:
        parse(doc, {"/k.pub": _pem(make())})
    assert problem in info.value.message and "/k.pub" in info.value.message


def test_unsupported_requirements_are_kept_and_judging_under_them_is_an_error(
    key: SigningKey,
) -> None:
    policy = parse({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
        "gpg.example/a": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/no"}],
        "rekor.example/a": [{"type": "sigstoreSigned", "keyData": key.key_data,
                             "rekorPublicKeyPath": "/no"}],
        "pki.example/a": [{"type": "sigstoreSigned", "pki": {"caRootsPath": "/no"}}],
    }}})  # fmt: skip
    kinds = {name: reqs[0] for name, reqs in policy.docker.items()}
    assert all(isinstance(r, Unsupported) for r in kinds.values())
    for name, word in (("gpg", "signedBy"), ("rekor", "Rekor"), ("pki", "pki")):
        image = DockerName.of(ImageReference.parse(f"{name}.example/a:1"))
        with pytest.raises(PolicyError, match=word):
            judge(policy, image, frozenset({Digest.parse(DIGEST)}), [], what="x")
    # Elsewhere, nothing is needed of them.
    other = DockerName.of(ImageReference.parse("ok.example/a:1"))
    assert judge(policy, other, frozenset(), [], what="x").accepted


def test_key_paths_and_datas_accept_a_signature_by_any_of_their_keys(
    key: SigningKey, tmp_path: Path
) -> None:
    second = make_key(tmp_path, "ed25519")
    policy = parse(
        {"default": [{"type": "sigstoreSigned", "keyPaths": ["/a.pub", "/b.pub"]}]},
        {"/a.pub": key.public.read_bytes(), "/b.pub": second.public.read_bytes()},
    )
    (requirement,) = policy.default
    assert isinstance(requirement, SigstoreSigned) and len(requirement.keys) == 2
    image = DockerName.of(ImageReference.parse("a.io/b:1"))
    signed = payload("a.io/b:1", DIGEST)
    found = [Found(signed, second.sign(signed), "tag")]
    verdict = judge(policy, image, frozenset({Digest.parse(DIGEST)}), found, what="x")
    assert verdict.accepted
    assert [c.key.fingerprint for c in verdict.verified if c.key] == [second.fingerprint]


# -- the payload, parsed strictly once its signature verified -------------------------


def _claims(**critical: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "critical": {
            "identity": {"docker-reference": "a.io/b:1"},
            "image": {"docker-manifest-digest": DIGEST},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    doc["critical"].update(critical)
    return doc


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({**_claims(), "extra": 1}, "the payload: unexpected member 'extra'"),
        (_claims(note="x"), "critical: unexpected member 'note'"),
        (_claims(type="atomic container signature"), "critical.type"),
        (_claims(image={"docker-manifest-digest": DIGEST, "x": 1}), "critical.image"),
        (_claims(identity={}), "critical.identity: missing member"),
        (_claims(image={"docker-manifest-digest": "sha256:AB"}), "docker-manifest-digest"),
        ({**_claims(), "optional": {"timestamp": 1.5}}, "not an integer"),
        ({**_claims(), "optional": []}, "neither null nor a JSON object"),
        ({"critical": _claims()["critical"]}, "missing member 'optional'"),
    ],
)
def test_a_verified_payload_that_is_not_exactly_the_format_is_refused(
    doc: dict[str, Any], problem: str, key: SigningKey
) -> None:
    data = json.dumps(doc).encode()
    policy = parse({"default": [{"type": "sigstoreSigned", "keyData": key.key_data}]})
    image = DockerName.of(ImageReference.parse("a.io/b:1"))
    verdict = judge(policy, image, frozenset({Digest.parse(DIGEST)}), [Found(data, key.sign(data),
                    "tag")], what="x")  # fmt: skip
    assert not verdict.accepted
    assert problem in verdict.reasons[0]


def test_a_payload_with_a_duplicated_member_is_refused(key: SigningKey) -> None:
    data = payload("a.io/b:1", DIGEST).replace(b'"optional":null', b'"optional":null,"optional":{}')
    with pytest.raises(SignatureCheckError, match="duplicate key 'optional'"):
        parse_payload(data)


def test_optional_claims_are_kept_and_unknown_ones_ignored() -> None:
    claims = parse_payload(payload("a.io/b", DIGEST, optional={"creator": "me", "timestamp": 7,
                                                               "ticket": [1]}))  # fmt: skip
    assert (claims.creator, claims.timestamp, claims.docker_reference) == ("me", 7, "a.io/b")


def test_the_digest_is_read_only_after_the_signature_verified(key: SigningKey) -> None:
    """A payload for the right digest under a broken signature says 'does not
    verify', never anything about its content."""
    data = payload("a.io/b:1", OTHER)
    policy = parse({"default": [{"type": "sigstoreSigned", "keyData": key.key_data}]})
    image = DockerName.of(ImageReference.parse("a.io/b:1"))
    forged = base64.b64encode(b"\x30" * 70).decode()
    verdict = judge(policy, image, frozenset({Digest.parse(DIGEST)}), [Found(data, forged, "t")],
                    what="x")  # fmt: skip
    assert "does not verify" in verdict.reasons[0] and OTHER not in verdict.reasons[0]


# -- hostile input ------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["default", "transports", "docker", "type", "keyData", "signedIdentity",
                         "reject", "sigstoreSigned", "insecureAcceptAnything", "", "x"]),
        inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_is_a_policy_or_a_policy_error(doc: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse(doc, {})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _json.map(lambda d: json.dumps(d).encode()))
def test_any_bytes_are_claims_or_a_signature_check_error(data: bytes) -> None:
    with contextlib.suppress(SignatureCheckError):
        parse_payload(data)


# -- attachments: carried with their image, never a way around the policy ------------


def test_only_a_real_looking_attachment_escapes_being_judged() -> None:
    """The producer lists images as attachments of a judged image: only those in its
    repository under a referrer tag (or none) are taken as such; the rest are judged
    like any image (here: refused for lacking a signature)."""
    from airbundle.errors import VettingError
    from airbundle.format.manifest import ImageEntry
    from airbundle.format.vetting import ImageEvidence, VettingRecord, check_bundle

    def entry(ref: str, digit: str) -> ImageEntry:
        return ImageEntry(ImageReference.parse(ref), "src", Digest.parse("sha256:" + digit * 64),
                          "application/vnd.oci.image.manifest.v1+json", 1)  # fmt: skip

    subject = entry("a.io/team/app:1", "1")
    real = entry(f"a.io/team/app:sha256-{'1' * 64}.sig", "2")
    untagged = entry(f"a.io/team/app@sha256:{'3' * 64}", "3")
    elsewhere = entry("a.io/team/other:sha256-" + "1" * 64 + ".sig", "4")
    disguised = entry("a.io/team/app:latest", "5")
    images = [subject, real, untagged, elsewhere, disguised]
    listed = tuple(i.digest for i in images[1:])
    evidence = ImageEvidence(subject.ref, subject.digest, attachments=listed)
    record = VettingRecord(None, (), False, (evidence,))
    policy = parse({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
        "a.io/team": [{"type": "reject"}]}}})  # fmt: skip
    with pytest.raises(VettingError) as info:
        check_bundle(images, record, policy, require_vetted=False, what="b")
    message = info.value.message
    assert "3 image(s) refused" in message
    for refused in (subject, elsewhere, disguised):
        assert f"{refused.ref}:" in message
    for attached in (real, untagged):
        assert f"{attached.ref}:" not in message
