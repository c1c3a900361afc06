"""Test support for `airbundle serve --bundle`: bundles made from OCI layouts,
volume sets on read-only media (a read-only bind mount in a mount namespace of
its own), a server started there, and the bytes of a member on the media.

Everything runs on 127.0.0.1 in temporary folders.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest, ImageEntry
from airbundle.format.oci import REF_NAME
from airbundle.format.reference import ImageReference
from airbundle.format.trust import TrustPolicy
from airbundle.ops.access import open_bundle_access
from airbundle.ops.keys import load_trust
from support.crafting import make_manifest, write_bundle
from support.env import clean_env, require_tool
from support.integration import starting
from support.serve import Serve

MiB = 1 << 20


def layout_members(layout: Path) -> tuple[list[tuple[str, bytes]], list[ImageEntry]]:
    """A layout's files as bundle members (as export orders them: the layout
    files, every manifest, then the other blobs) and its tagged images."""
    index = json.loads((layout / "index.json").read_text())
    images = []
    for m in index["manifests"]:
        name = m["annotations"][REF_NAME]
        images.append(
            ImageEntry(
                ref=ImageReference.parse(name),
                source=name,
                digest=Digest.parse(m["digest"]),
                media_type=m["mediaType"],
                size=m["size"],
            )
        )
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    docs = [p for p in blobs if p.read_bytes()[:1] == b"{" and b"schemaVersion" in p.read_bytes()]
    rest = [p for p in blobs if p not in docs]
    members = [
        ("images/oci-layout", (layout / "oci-layout").read_bytes()),
        ("images/index.json", (layout / "index.json").read_bytes()),
        *((f"images/blobs/sha256/{p.name}", p.read_bytes()) for p in docs + rest),
    ]
    return members, images


def bundle_from_layout(
    layout: Path,
    out: Path,
    key: Ed25519PrivateKey,
    *,
    name: str = "served",
    **manifest_fields: Any,
) -> Path:
    """A signed bundle carrying exactly the layout's images (as written by the
    real BundleWriter, with its seek table)."""
    members, images = layout_members(layout)
    manifest = make_manifest(members, images=images, name=name)
    if manifest_fields:
        manifest = replace(manifest, **manifest_fields)
    return write_bundle(out, manifest, [], members, keys=[key])


def member_spans(bundle: Path, pub: Path, path: str) -> list[tuple[Path, int, int]]:
    """Where a raw member's bytes lie on the media: (file, offset, length)."""
    policy = TrustPolicy(tuple(load_trust([pub])))
    with open_bundle_access(bundle, policy) as access:
        spans = access.payload_spans(path)
        assert spans is not None, f"{path} is not stored raw"
        return [(s.path, s.offset, s.length) for s in spans]


def member_frame(bundle: Path, pub: Path, path: str) -> tuple[int, int]:
    """The (offset, size) of the compressed frame holding a member's first byte."""
    policy = TrustPolicy(tuple(load_trust([pub])))
    with open_bundle_access(bundle, policy) as access:
        frame = access.frames.frames[access.member(path).first_frame]
        return frame.offset, frame.size


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def manifest_of(bundle: Path, pub: Path) -> BundleManifest:
    policy = TrustPolicy(tuple(load_trust([pub])))
    with open_bundle_access(bundle, policy) as access:
        return access.manifest


# --- read-only media ------------------------------------------------------------------


def read_only(folder: Path, argv: Sequence[str]) -> list[str]:
    """`argv` run in a user and mount namespace where `folder` is bound onto
    itself read-only (what a DVD or a write-protected stick is); the network is
    the host's, so a server started so is reachable on 127.0.0.1."""
    starting("a mount namespace")
    unshare = require_tool("unshare")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return [
        unshare,
        "--user",
        "--map-root-user",
        "--mount",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        str(folder),
        *argv,
    ]


class ServeReadOnly(Serve):
    """`airbundle serve ARGS --listen 127.0.0.1:0` with `media` mounted read-only."""

    what = "airbundle serve (read-only media)"

    def __init__(
        self,
        media: Path,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.media = media
        super().__init__(args, workdir, env=env, timeout=timeout)

    def wrap(self, argv: list[str]) -> list[str]:
        return read_only(self.media, argv)


def run_read_only(folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        read_only(folder, argv),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


__all__ = [
    "MiB",
    "ServeReadOnly",
    "bundle_from_layout",
    "flip_byte",
    "layout_members",
    "manifest_of",
    "member_frame",
    "member_spans",
    "read_only",
    "run_read_only",
]
