"""Bundles as airbundle wrote them before the seek table (format version 1 still).

The content region was one stream of zstd's multi-threaded compressor (2 MiB
jobs, checksums), cut only where an already-compressed member of 1 MiB or more
went into raw frames (its padding started the next compressed frame), and the
archive ended with the end-of-archive marker, a flushed frame and the empty
frame closing the stream wrote; no seek table, no `seekTable` in the manifest.
tests/data/legacy/samples-legacy.airbundle is the samples exported by that
code (commit e6088cf); test_legacy_writer_reproduces_the_old_bytes checks that
this writer makes the same content region from the same members, so bundles
made here stand for old ones of any shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.format import archive, sshsig
from airbundle.format.archive import RAW_MEMBER_MIN, encode_prefix, looks_compressed
from airbundle.format.manifest import BundleManifest
from airbundle.format.tarstream import BLOCK, encode_header, padding
from support.env import TESTS_DIR

LEGACY_DATA = TESTS_DIR / "data" / "legacy"
LEGACY_SAMPLES = LEGACY_DATA / "samples-legacy.airbundle"
LEGACY_PUB = LEGACY_DATA / "legacy-signer.pub"
LEGACY_MTIME = 1704067200


def legacy_content(members: Sequence[tuple[str, bytes]], *, mtime: int = LEGACY_MTIME) -> bytes:
    """The content region the old BundleWriter wrote for these members."""
    out = io.BytesIO()
    params = zstandard.ZstdCompressionParameters.from_level(
        3, threads=1, job_size=2 << 20, write_checksum=True
    )
    z = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
    for path, data in members:
        z.write(encode_header(path, len(data), mtime=mtime))
        if len(data) >= RAW_MEMBER_MIN and looks_compressed(data[:6]):
            z.flush(zstandard.FLUSH_FRAME)
            for start in range(0, len(data), RAW_MEMBER_MIN):
                chunk = data[start : start + RAW_MEMBER_MIN]
                buf = bytearray(archive.raw_frame_size(len(chunk)))
                out.write(buf[: archive.raw_frame_into(buf, chunk)])
        else:
            z.write(data)
        z.write(b"\0" * padding(len(data)))
    z.write(b"\0" * (2 * BLOCK))
    z.flush(zstandard.FLUSH_FRAME)
    z.close()  # type: ignore[no-untyped-call]
    return out.getvalue()


def legacy_bundle(
    members: Sequence[tuple[str, bytes]],
    manifest: BundleManifest,
    key: Ed25519PrivateKey,
    *,
    capacity: int | None = None,
) -> bytes:
    """A whole old-style bundle: header, prefix (manifest without seekTable), content."""
    assert manifest.seek_table is None
    data = dataclasses.replace(manifest).to_bytes()
    signatures = [sshsig.sign(data, key)]
    room = capacity or archive.prefix_upper_bound(len(data), 16, 1024)
    prefix = encode_prefix(data, signatures, capacity=room, mtime=LEGACY_MTIME)
    content = legacy_content(members)
    total = archive.HEADER_SIZE + room + len(content)
    return archive._encode_file_header(room, total) + prefix + content


def gzip_like(size: int, seed: bytes = b"layer") -> bytes:
    """Incompressible bytes that start as a gzip stream does."""
    return b"\x1f\x8b" + hashlib.shake_256(seed).digest(size - 2)
