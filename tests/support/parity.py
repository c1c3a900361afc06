"""Test support for parity volumes: an independent judge of the erasure code,
volume sets with parity made from crafted bundles, and the ways media fail.

The judge shares nothing with airbundle/format/erasure.py: its GF(2^8)
multiply is shift-and-add with the reduction polynomial written out (no
tables), its inverse a search, its rank plain Gaussian elimination, and its
Cauchy matrix is written from the definition in docs/bundle-format.md.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.ops.volumes import split_bundle
from support.crafting import blob, make_manifest, write_bundle

# --- the judge -------------------------------------------------------------------------

REDUCTION = 0b1_0001_1101  # x^8 + x^4 + x^3 + x^2 + 1


def judge_mul(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= REDUCTION
    return product


@functools.cache
def judge_inverse(a: int) -> int:
    return next(x for x in range(1, 256) if judge_mul(a, x) == 1)


def judge_cauchy(k: int, m: int) -> list[list[int]]:
    """docs/bundle-format.md's matrix, from its words: 1/((255-j) xor i), columns
    times (255 xor i), rows divided by their first element."""
    rows = []
    for j in range(m):
        row = [judge_mul(judge_inverse((255 - j) ^ i), 255 ^ i) for i in range(k)]
        first = judge_inverse(row[0])
        rows.append([judge_mul(v, first) for v in row])
    return rows


def judge_rank(rows: Sequence[Sequence[int]]) -> int:
    work = [list(r) for r in rows]
    rank = 0
    cols = len(work[0]) if work else 0
    for col in range(cols):
        pivot = next((r for r in range(rank, len(work)) if work[r][col]), None)
        if pivot is None:
            continue
        work[rank], work[pivot] = work[pivot], work[rank]
        inv = judge_inverse(work[rank][col])
        work[rank] = [judge_mul(v, inv) for v in work[rank]]
        for r in range(len(work)):
            if r != rank and work[r][col]:
                f = work[r][col]
                work[r] = [x ^ judge_mul(f, y) for x, y in zip(work[r], work[rank], strict=True)]
        rank += 1
    return rank


def judge_generator(k: int, m: int) -> list[list[int]]:
    identity = [[int(i == j) for j in range(k)] for i in range(k)]
    return identity + judge_cauchy(k, m)


def judge_encode(k: int, m: int, shards: Sequence[bytes]) -> list[bytes]:
    """The parity shards, byte by byte (slow: for small data only)."""
    matrix = judge_cauchy(k, m)
    n = len(shards[0])
    out = []
    for row in matrix:
        acc = bytearray(n)
        for c, shard in zip(row, shards, strict=True):
            for o in range(n):
                acc[o] ^= judge_mul(c, shard[o])
        out.append(bytes(acc))
    return out


# --- sets with parity ------------------------------------------------------------------


@dataclass(frozen=True)
class ParitySet:
    folder: Path
    base: str  # NAME.airbundle
    index: dict[str, Any]  # the index as JSON
    originals: dict[str, bytes]  # every volume's bytes as written

    @property
    def index_path(self) -> Path:
        return self.folder / f"{self.base}.volumes"

    def data_names(self) -> list[str]:
        return [v["name"] for v in self.index["volumes"]]

    def parity_names(self) -> list[str]:
        return [v["name"] for v in self.index["parity"]["volumes"]]

    def path(self, name: str) -> Path:
        return self.folder / name

    def copy(self, folder: Path) -> ParitySet:
        shutil.copytree(self.folder, folder)
        return ParitySet(folder, self.base, self.index, self.originals)


def random_members(total: int, seed: int) -> list[tuple[str, bytes]]:
    """Incompressible blobs adding up to about `total` bytes (zstd keeps them raw)."""
    rng = random.Random(seed)  # noqa: S311 (test data)
    sizes = [total // 3, total // 4, total // 6, total - total // 3 - total // 4 - total // 6]
    return [
        ("images/oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("images/index.json", b'{"schemaVersion":2,"manifests":[]}'),
        *(blob(rng.randbytes(n)) for n in sizes),
    ]


def parity_set(
    folder: Path,
    key: Ed25519PrivateKey,
    *,
    content: int,
    volume: int,
    parity: int | float,
    seed: int = 1,
    name: str = "set.airbundle",
    label: str = "parity",
) -> ParitySet:
    """A crafted bundle of about `content` random bytes, split into volumes of
    `volume` bytes with `parity` parity volumes."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f"{folder.name}-single"
    work.mkdir(exist_ok=True)
    members = random_members(content, seed)
    bundle = write_bundle(
        work / name, make_manifest(members, name=f"{label}-{seed}"), [], members, keys=[key]
    )
    index = split_bundle(bundle, volume, (key,), folder=folder, parity=parity)
    doc = json.loads(index.read_bytes())
    names = [v["name"] for v in doc["volumes"]] + [v["name"] for v in doc["parity"]["volumes"]]
    return ParitySet(folder, name, doc, {n: (folder / n).read_bytes() for n in names})


def layer_layout(root: Path, size: int) -> Path:
    """An OCI layout with one incompressible layer of about `size` bytes
    (several volumes' worth), tagged 1."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = hashlib.shake_256(b"airbundle volumes").digest(size)
        info = tarfile.TarInfo("data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = blob(buf.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": [layer],
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


# --- damage ----------------------------------------------------------------------------

DAMAGE = ("delete", "truncate", "zero", "flip")


def damage(path: Path, how: str, *, seed: int = 0) -> None:
    """What happens to a file on media: gone, cut short, a run of zeros (a
    bad sector read as nothing), one bit flipped."""
    rng = random.Random(f"{path.name}{how}{seed}")  # noqa: S311 (test data)
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: rng.randrange(0, len(data))]
    elif how == "zero":
        start = rng.randrange(len(data) // 2, len(data))
        length = min(4096, len(data) - start)
        data[start : start + length] = bytes(length)
        if hashlib.sha256(data).digest() == hashlib.sha256(path.read_bytes()).digest():
            data[-1] ^= 0xFF  # those bytes were zeros already
    elif how == "flip":
        pos = rng.randrange(len(data) // 2, len(data))  # past any prefix region
        data[pos] ^= 1 << rng.randrange(8)
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))


def tree_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Each file's size, mtime and sha256: what 'nothing was written' compares."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))
