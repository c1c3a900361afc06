"""Specs, export, import and verify through the library API: the one set of helpers
the tests share (the CLI is exercised through ``support.env.AIRBUNDLE``).

* :func:`write_spec` writes a BundleSpec (as JSON, which is YAML) from image
  references or entries and repository entries;
* :func:`export` exports a spec file; :func:`export_spec` writes the spec and
  exports it in one step (``FOLDER/NAME.yaml`` -> ``FOLDER/out/NAME.airbundle``);
* :func:`import_` imports with a trust policy made from public keys;
* :func:`sha256` is the ``sha256:HEX`` digest of bytes, as registries name them;
* :func:`fast_transport` retries at once (10 ms backoff), for fault tests.

Export and import options pass through as keywords (``transport=``, ``sequence=``,
``registry=``, ``state_dir=``...), exactly as ``ExportOptions`` and
``ImportOptions`` name them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.registry.transport import RetryPolicy, Transport
from airbundle.format.trust import TrustPolicy
from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.importer import ImportOptions, ImportReport, import_bundle
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy, verify_bundle
from support.keys import KeyPair

# An image in a spec: a reference ("registry/repo:tag", "oci:PATH:REF") or a whole
# entry ({"ref": ..., "name": ...}).
Image = str | Mapping[str, Any]


def fast_transport(attempts: int = 3, *, read_timeout: float = 10.0) -> Transport:
    """Retries with a 10 ms backoff, so a fault costs milliseconds, not seconds."""
    return Transport(
        retry=RetryPolicy(
            attempts=attempts,
            backoff=0.01,
            max_wait=2.0,
            connect_timeout=5.0,
            read_timeout=read_timeout,
        )
    )


def sha256(data: bytes) -> str:
    """``sha256:HEX`` of ``data``: how registries and manifests name content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repo_entry(name: str, url: str, refs: Iterable[str] | None = None) -> dict[str, Any]:
    """A spec's repository entry (all refs unless ``refs`` is given)."""
    entry: dict[str, Any] = {"name": name, "url": url}
    if refs is not None:
        entry["refs"] = list(refs)
    return entry


def write_spec(
    path: Path,
    *images: Image,
    repos: Iterable[Mapping[str, Any]] = (),
    name: str = "test",
) -> Path:
    """A BundleSpec named ``name`` at ``path`` listing ``images`` and ``repos``
    (sections left empty are left out). Relative paths in it resolve from its folder."""
    doc: dict[str, Any] = {
        "apiVersion": "airbundle/v1",
        "kind": "BundleSpec",
        "metadata": {"name": name},
    }
    if images:
        doc["images"] = [{"ref": i} if isinstance(i, str) else dict(i) for i in images]
    repo_list = [dict(r) for r in repos]
    if repo_list:
        doc["repos"] = repo_list
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path


def spec_with(folder: Path, body: str, name: str) -> Path:
    """``folder/NAME.yaml``: a BundleSpec named ``name`` whose sections are the YAML
    text ``body`` (as a user writes them: charts and files read best as text)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {{name: {name}}}\n{body}"
    )
    return path


def signing_keys(*keys: KeyPair | Ed25519PrivateKey) -> tuple[Ed25519PrivateKey, ...]:
    """Private keys, loaded from key pairs' files (unencrypted) or given as they are."""
    return tuple(
        k if isinstance(k, Ed25519PrivateKey) else load_signing_key(k.private, passphrase=None)
        for k in keys
    )


def export(
    spec: Path, out: Path, *keys: KeyPair | Ed25519PrivateKey, **options: Any
) -> ExportResult:
    """Export the spec file ``spec`` to ``out`` (its folder created: export
    itself refuses a missing one), signed by every key in ``keys``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = ExportOptions(output=out, keys=signing_keys(*keys), **options)
    return export_bundle(load_spec(spec), opts)


def export_spec(
    folder: Path,
    key: KeyPair,
    *images: Image,
    repos: Iterable[Mapping[str, Any]] = (),
    name: str = "b",
    **options: Any,
) -> ExportResult:
    """Write ``folder/NAME.yaml`` (spec name ``name``) and export it to
    ``folder/out/NAME.airbundle``."""
    spec = write_spec(folder / f"{name}.yaml", *images, repos=repos, name=name)
    return export(spec, folder / "out" / f"{name}.airbundle", key, **options)


def trust_policy(*trusted: KeyPair | Path, threshold: int = 1) -> TrustPolicy:
    """A policy trusting these public keys (key pairs or .pub / allowed_signers files)."""
    files = [t.public if isinstance(t, KeyPair) else t for t in trusted]
    return load_policy(load_trust(files), threshold)


def import_(bundle: Path, trust: KeyPair | TrustPolicy, **options: Any) -> ImportReport:
    """Import ``bundle`` trusting ``trust`` (one key pair, or a whole policy)."""
    policy = trust if isinstance(trust, TrustPolicy) else trust_policy(trust)
    return import_bundle(bundle, ImportOptions(policy=policy, **options))


def import_with_state(bundle: Path, key: KeyPair, tmp: Path, **options: Any) -> ImportReport:
    """Import ``bundle`` trusting ``key``, its import state kept in ``tmp/state``."""
    return import_(bundle, key, state_dir=tmp / "state", **options)


def verified_digests(bundle: Path, key: KeyPair) -> dict[str, str]:
    """Verify every member of the bundle; image reference (without its registry)
    -> root digest."""
    result = verify_bundle(bundle, trust_policy(key))
    return {
        str(i.ref).split("/", 1)[1]: str(i.digest) for i in result.authenticated.manifest.images
    }


def leftovers(folder: Path, keep: str | None = None) -> list[str]:
    """The names in ``folder`` other than ``keep`` (none if it does not exist)."""
    return sorted(p.name for p in folder.iterdir() if p.name != keep) if folder.is_dir() else []
