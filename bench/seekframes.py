"""Seek frames: what the content region's frame size costs and buys.

    python -m bench.seekframes sweep [--corpus FILE] [--sizes 1,2,4,8] [--threads 1,2]
    python -m bench.seekframes latency --gib 3 [--work DIR]

``sweep`` writes one member (an uncompressed tar, as a docker-archive layer is)
into a bundle at each frame size and thread count, and reports the bundle size
against the single multi-threaded stream airbundle wrote before the seek table,
the export and decode time, and the time to read 64 KiB at a random offset of
the member (which decodes at most one frame). Without ``--corpus`` the member is
a tar of /usr/lib/python3* and /usr/share/doc (text, code, compiled Python).

``latency`` builds a bundle of about ``--gib`` GiB (half already-compressed
layers, half compressible members, and 2,000 small members), then measures
opening it for random access and reading members and ranges at random, with the
page cache of the bundle dropped first (posix_fadvise) and then warm.

Times are wall clock on whatever else the machine runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.format import sshsig
from airbundle.format.archive import BundleReader, BundleWriter, prefix_upper_bound
from airbundle.format.digest import Digest
from airbundle.format.manifest import SEEK_TABLE_DRAFT, BundleInfo, BundleManifest, MemberEntry
from airbundle.format.tarstream import BLOCK, encode_header, padding
from airbundle.format.trust import TrustPolicy, parse_trust_file
from airbundle.limits import Limits
from airbundle.ops.access import open_bundle_access
from airbundle.ops.verify import stream_members

MiB = 1 << 20


def default_corpus(work: Path) -> Path:
    out = work / "corpus.tar"
    if not out.exists():
        sources = [str(p) for p in Path("/usr/lib").glob("python3*")] + ["/usr/share/doc"]
        subprocess.run(["tar", "cf", str(out), *sources], check=False, capture_output=True)
    return out


def _chunks_of(data: bytes) -> Callable[[], object]:
    """A Source's chunks: the whole of `data` at once."""
    return lambda: [data]


def make_manifest(members: list[MemberEntry]) -> BundleManifest:
    info = BundleInfo(
        "seekframes", "00000000-0000-4000-8000-000000000000", _epoch(), "bench", "default", 1
    )
    return BundleManifest(info, tuple(members), (), ())


def _epoch() -> datetime:

    return datetime(2024, 1, 1, tzinfo=UTC)


@dataclasses.dataclass
class Source:
    path: str
    size: int
    chunks: Callable[[], object]
    digest: Digest


def write_bundle(
    out: Path,
    sources: list[Source],
    key: Ed25519PrivateKey,
    limits: Limits,
    threads: int,
    level: int = 3,
) -> None:
    draft = make_manifest([MemberEntry(s.path, s.size, s.digest) for s in sources])
    draft = dataclasses.replace(draft, seek_table=SEEK_TABLE_DRAFT)
    capacity = prefix_upper_bound(len(draft.to_bytes()), 2, 1024)
    with out.open("wb") as fh:
        writer = BundleWriter(
            fh, prefix_capacity=capacity, threads=threads, limits=limits, level=level
        )
        written = [writer.add_stream(s.path, s.size, s.chunks()) for s in sources]  # type: ignore[arg-type]
        table = writer.end_content()
        manifest = dataclasses.replace(
            make_manifest([MemberEntry(w.path, w.size, w.sha256) for w in written]),
            seek_table=table,
        )
        data = manifest.to_bytes()
        writer.finish(data, [sshsig.sign(data, key)])


def file_source(path: Path, name: str) -> Source:
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            h.update(chunk)

    def chunks() -> object:
        with path.open("rb") as fh:
            while chunk := fh.read(MiB):
                yield chunk

    return Source(name, size, chunks, Digest("sha256", h.hexdigest()))


def stream_size(path: Path, threads: int, level: int) -> tuple[int, float]:
    """The content region as airbundle wrote it before the seek table: one
    multi-threaded zstd stream, 2 MiB jobs."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, job_size=2 * MiB, write_checksum=True
    )
    out = io.BytesIO()
    t = time.perf_counter()
    z = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
    z.write(encode_header("images/blobs/sha256/x", path.stat().st_size))
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            z.write(chunk)
    z.write(b"\0" * (padding(path.stat().st_size) + 2 * BLOCK))
    z.flush(zstandard.FLUSH_FRAME)
    return len(out.getvalue()), time.perf_counter() - t


def policy_for(key: Ed25519PrivateKey) -> TrustPolicy:
    line = sshsig.public_key_of(key).openssh_line()
    return TrustPolicy(tuple(parse_trust_file(line, source="bench")))


def decode_time(path: Path, policy: TrustPolicy) -> float:
    from airbundle.ops.verify import authenticate

    t = time.perf_counter()
    with path.open("rb") as fh:
        reader = BundleReader(fh, source=str(path))
        auth = authenticate(reader.read_prefix(), policy, source=str(path))
        stream_members(reader, auth.manifest)
    return time.perf_counter() - t


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sweep(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="seekframes-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus) if args.corpus else default_corpus(work)
    key = Ed25519PrivateKey.generate()
    policy = policy_for(key)
    source = file_source(corpus, "")
    source = dataclasses.replace(source, path=f"images/blobs/sha256/{source.digest.hex}")
    print(f"member: {corpus} ({source.size / MiB:.1f} MiB), level {args.level}, {args.reps} reps")
    base = {}
    for threads in args.threads:
        sizes, times = [], []
        for _ in range(args.reps):
            n, t = stream_size(corpus, threads, args.level)
            sizes.append(n)
            times.append(t)
        base[threads] = sizes[0]
        print(
            f"stream (before)  threads {threads}: {sizes[0]:>11,} bytes  ratio "
            f"{source.size / sizes[0]:.3f}  compress {statistics.median(times):.2f} s"
        )
    rng = random.Random(7)  # noqa: S311 - seeded offsets, not crypto
    for mib in args.sizes:
        limits = Limits(seek_frame_bytes=mib * MiB)
        for threads in args.threads:
            out = work / f"b-{mib}-{threads}.airbundle"
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                write_bundle(out, [source], key, limits, threads, args.level)
                times.append(time.perf_counter() - t)
            size = out.stat().st_size
            decode = statistics.median(decode_time(out, policy) for _ in range(args.reps))
            lat = []
            with open_bundle_access(out, policy) as bundle:
                for _ in range(50):
                    reader = bundle.open_member(source.path)
                    at = rng.randrange(source.size - 65536)
                    t = time.perf_counter()
                    reader.seek(at)
                    reader.read(65536)
                    lat.append(time.perf_counter() - t)
            print(
                f"frames {mib} MiB  threads {threads}: {size:>11,} bytes  "
                f"x{size / base[threads]:.4f} "
                f"of the stream  export {statistics.median(times):.2f} s  decode {decode:.2f} s  "
                f"64 KiB at a random offset p50 {statistics.median(lat) * 1000:.1f} ms "
                f"max {max(lat) * 1000:.1f} ms"
            )


def latency(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="seekframes-"))
    work.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    policy = policy_for(key)
    total = int(args.gib * (1 << 30))
    rng = random.Random(11)  # noqa: S311 - seeded data, not crypto
    corpus = default_corpus(work)
    text = corpus.read_bytes()[: 64 * MiB]
    sources: list[Source] = []

    def blob_source(name: str, size: int, seed: int, compressed: bool) -> Source:
        def chunks() -> object:
            left, n = size, 0
            while left:
                step = min(MiB, left)
                if compressed:
                    piece = hashlib.shake_256(b"%d-%d" % (seed, n)).digest(step)
                    if n == 0:
                        piece = b"\x1f\x8b" + piece[2:]
                else:
                    at = (seed * 7919 + n * MiB) % (len(text) - step)
                    piece = text[at : at + step]
                yield piece
                left -= step
                n += 1

        h = hashlib.sha256()
        for c in chunks():  # type: ignore[attr-defined]
            h.update(c)
        return Source(name, size, chunks, Digest("sha256", h.hexdigest()))

    for i in range(2000):
        data = b'{"schemaVersion":2,"i":%d}' % i + bytes(rng.randrange(200, 2000))
        d = hashlib.sha256(data).hexdigest()
        sources.append(
            Source(f"images/blobs/sha256/{d}", len(data), _chunks_of(data), Digest("sha256", d))
        )
    big = 256 * MiB
    k = 0
    while sum(s.size for s in sources) < total:
        compressed = k % 2 == 0
        src = blob_source("", big, k, compressed)
        sources.append(dataclasses.replace(src, path=f"images/blobs/sha256/{src.digest.hex}"))
        k += 1
    rng.shuffle(sources)
    out = work / "big.airbundle"
    t = time.perf_counter()
    write_bundle(out, sources, key, Limits(), -1)
    print(
        f"wrote {out} ({out.stat().st_size / (1 << 30):.2f} GiB, {len(sources)} members) in "
        f"{time.perf_counter() - t:.1f} s"
    )
    for state in ("cold", "warm"):
        if state == "cold":
            drop_cache(out)
        t = time.perf_counter()
        bundle = open_bundle_access(out, policy)
        opened = time.perf_counter() - t
        picks = [rng.choice(sources) for _ in range(args.samples)]
        large = [s for s in sources if s.size > MiB]
        member_lat, range_lat = [], []
        with bundle:
            for src in picks:
                if state == "cold":
                    drop_cache(out)
                t = time.perf_counter()
                reader = bundle.open_member(src.path)
                reader.read(65536)
                member_lat.append(time.perf_counter() - t)
            for _ in range(args.samples):
                src = rng.choice(large)
                at = rng.randrange(src.size - 65536)
                if state == "cold":
                    drop_cache(out)
                t = time.perf_counter()
                reader = bundle.open_member(src.path)
                reader.seek(at)
                reader.read(65536)
                range_lat.append(time.perf_counter() - t)

        def q(values: list[float], p: float) -> float:
            values = sorted(values)
            return values[min(len(values) - 1, int(p * len(values)))] * 1000

        print(
            f"{state}: open {opened * 1000:.0f} ms; open_member + first 64 KiB p50 "
            f"{q(member_lat, 0.5):.1f} ms p99 {q(member_lat, 0.99):.1f} ms; 64 KiB at a random "
            f"offset of a large member p50 {q(range_lat, 0.5):.1f} ms "
            f"p99 {q(range_lat, 0.99):.1f} ms"
        )
    if not args.keep:
        out.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seekframes", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--corpus")
    s.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 8])
    s.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    s.add_argument("--level", type=int, default=3)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--work")
    lat = sub.add_parser("latency")
    lat.add_argument("--gib", type=float, default=3.0)
    lat.add_argument("--samples", type=int, default=200)
    lat.add_argument("--work")
    lat.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.cmd == "sweep":
        sweep(args)
    else:
        latency(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
