"""A sigstore signer for the tests, made independently of airbundle's verifier.

Keys are made and payloads signed by the ``openssl`` command line (never by
the `cryptography` calls airbundle verifies with); payloads and manifests are
written by hand from the published layout, and pushed to the registry over
plain HTTP (never through airbundle's registry client):

* sigstore/cosign ``specs/SIGNATURE_SPEC.md``: a ``sha256-<hex>.sig`` tag in
  the image's repository whose OCI manifest has one layer per signature, of
  media type ``application/vnd.dev.cosign.simplesigning.v1+json``, holding the
  payload; the base64 signature in its ``dev.cosignproject.cosign/signature``
  annotation; several signatures of one image are several layers;
* containers-signature(5) and sigstore's ``payload.SimpleContainerImage``: the
  payload is ``{"critical": {"identity": {"docker-reference": REF}, "image":
  {"docker-manifest-digest": DIGEST}, "type": "cosign container image
  signature"}, "optional": null}``, marshalled compactly in that member order
  as Go's encoding/json writes it (cosign itself signs only the repository as
  the identity: pass ``identity=`` the repository to get exactly its bytes);
* the OCI 1.1 form cosign writes with ``--registry-referrers-mode=oci-1-1``: an
  artifact (artifactType ``application/vnd.dev.cosign.artifact.sig.v1+json``)
  whose ``subject`` is the image, listed in the referrers fallback tag
  ``sha256-<hex>`` (distribution 2.8 has no referrers API).

Signature schemes, as sigstore's verifiers expect them: ECDSA over SHA-256,
DER-encoded (``openssl dgst -sha256 -sign``); RSA PKCS#1 v1.5 over SHA-256
(the same command); Ed25519 over the payload itself (``openssl pkeyutl -sign
-rawin``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"

_GENPKEY = {
    "ecdsa-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ed25519": ["-algorithm", "ED25519"],
    "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
}
KINDS = tuple(_GENPKEY)


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl not found: apt-get install openssl"
    proc = subprocess.run(
        [openssl, *args], input=data, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr.decode()}"
    return proc.stdout


@dataclass(frozen=True)
class SigningKey:
    kind: str
    private: Path
    public: Path  # PEM, -----BEGIN PUBLIC KEY-----

    @property
    def fingerprint(self) -> str:
        """sha256 of the DER SubjectPublicKeyInfo, as openssl writes it."""
        der = _openssl("pkey", "-pubin", "-in", str(self.public), "-outform", "DER")
        return "sha256:" + hashlib.sha256(der).hexdigest()

    @property
    def key_data(self) -> str:
        """The public key as a policy's keyData: base64 of the PEM."""
        return base64.b64encode(self.public.read_bytes()).decode("ascii")

    def sign(self, payload: bytes) -> str:
        """The base64 signature over `payload`, as cosign stores it."""
        source = self.private.with_suffix(".payload")
        source.write_bytes(payload)
        if self.kind == "ed25519":
            raw = _openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(self.private),
                           "-in", str(source))  # fmt: skip
        else:
            raw = _openssl("dgst", "-sha256", "-sign", str(self.private), str(source))
        return base64.b64encode(raw).decode("ascii")


def make_key(folder: Path, kind: str = "ecdsa-p256", name: str | None = None) -> SigningKey:
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / (name or kind)
    private = base.with_suffix(".key")
    public = base.with_suffix(".pub")
    _openssl("genpkey", *_GENPKEY[kind], "-out", str(private))
    _openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    return SigningKey(kind, private, public)


def payload(identity: str, digest: str, *, optional: dict[str, Any] | None = None) -> bytes:
    """The simple-signing payload, byte for byte as Go marshals cosign's struct."""
    doc = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": optional,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Pusher:
    """The distribution API's push side over plain HTTP, just what signing needs."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        name, port = self.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(name, int(port), timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp

    def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        start = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        assert start.status == 202, start.status
        location = start.headers["Location"]
        path = location.split(self.host, 1)[-1]
        sep = "&" if "?" in path else "?"
        done = self._request(
            "PUT",
            f"{path}{sep}digest={sha256(data)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert done.status == 201, done.status
        return {"digest": sha256(data), "size": len(data)}

    def manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        resp = self._request(
            "PUT", f"/v2/{repo}/manifests/{reference}", data, {"Content-Type": media_type}
        )
        assert resp.status == 201, (resp.status, data)
        return sha256(data)

    def get(self, repo: str, reference: str, accept: str) -> bytes | None:
        name, port = self.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(name, int(port), timeout=30)
        conn.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return body if resp.status == 200 else None


@dataclass(frozen=True)
class Signature:
    """One signature as it will be stored: payload bytes and base64 signature."""

    payload: bytes
    signature: str

    def layer(self, pusher: Pusher, repo: str) -> dict[str, Any]:
        stored = pusher.blob(repo, self.payload)
        return {
            "mediaType": SIMPLE_SIGNING,
            **stored,
            "annotations": {SIGNATURE_ANNOTATION: self.signature},
        }


def signature(key: SigningKey, identity: str, digest: str) -> Signature:
    data = payload(identity, digest)
    return Signature(data, key.sign(data))


def attach(
    host: str, repo: str, subject: str, signatures: list[Signature], *, subject_size: int = 0,
    subject_type: str = OCI_INDEX, mode: str = "tag",
) -> str:  # fmt: skip
    """Store `signatures` for the image `subject` in `repo`, as cosign lays them
    out: mode "tag" (``sha256-<hex>.sig``) or "referrer" (OCI 1.1 artifact
    listed in the fallback tag). Returns the signature manifest's digest."""
    pusher = Pusher(host)
    layers = [s.layer(pusher, repo) for s in signatures]
    tag = "sha256-" + subject.split(":", 1)[1]
    if mode == "tag":
        # cosign's config: an image config whose rootfs lists the payloads.
        config = json.dumps(
            {
                "architecture": "",
                "config": {},
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            },
            separators=(",", ":"),
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **pusher.blob(repo, config)},
            "layers": layers,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        return pusher.manifest(repo, f"{tag}.sig", data, OCI_MANIFEST)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIG_ARTIFACT,
        "config": {"mediaType": EMPTY, **pusher.blob(repo, b"{}")},
        "layers": layers,
        "subject": {"mediaType": subject_type, "digest": subject, "size": subject_size},
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = pusher.manifest(repo, sha256(data), data, OCI_MANIFEST)
    # The referrers fallback: an index under sha256-<hex> listing the artifact.
    old = pusher.get(repo, tag, OCI_INDEX)
    entries = json.loads(old)["manifests"] if old else []
    entries.append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(data),
            "artifactType": SIG_ARTIFACT,
        }
    )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, separators=(",", ":")
    ).encode()
    pusher.manifest(repo, tag, index, OCI_INDEX)
    return digest
