"""What this machine can do at best: the floor under every step.

* disk: ``dd`` sequential write (``conv=fdatasync``), then read back twice: through
  the page cache (the file was just written, so it is cached: that is what the
  benchmark's own reads see too, the machine has RAM to spare) and with
  ``iflag=direct`` (the device itself);
* sha256 (hashlib) per core, 1 MiB chunks;
* zstd level 3 (python ``zstandard``) compression and decompression, one thread
  and all threads, on the generated gzip layer data.

All rates are in bytes per second of *uncompressed* data (for zstd: the input of
compression, the output of decompression).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zstandard

from bench.config import MiB

MIN_SECONDS = 0.5
MIN_PASSES = 3
DD_PASSES = 2


def _rate(fn: Callable[[], int]) -> float:
    """Best bytes per second of single passes of fn (which returns the bytes it
    processed), over at least MIN_PASSES passes and MIN_SECONDS: the machine is
    shared, and a limit is what it can do at best."""
    best = 0.0
    passes = 0
    start = time.perf_counter()
    while passes < MIN_PASSES or time.perf_counter() - start < MIN_SECONDS:
        t = time.perf_counter()
        done = fn()
        best = max(best, done / (time.perf_counter() - t))
        passes += 1
    return best


def _dd(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", *args, "status=none"], check=True)
    return time.perf_counter() - start


def disk(work: Path, mib: int) -> dict[str, float]:
    """Best of DD_PASSES for each dd (seconds -> bytes per second)."""
    path = work / "dd-probe.bin"
    write = cached = direct = float("inf")
    try:
        for _ in range(DD_PASSES):
            path.unlink(missing_ok=True)
            args = ["if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fdatasync"]
            write = min(write, _dd(args))
            cached = min(cached, _dd([f"if={path}", "of=/dev/null", "bs=1M"]))
            direct = min(direct, _dd([f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"]))
    finally:
        path.unlink(missing_ok=True)
    size = mib * MiB
    return {
        "disk_write": size / write,
        "disk_read_cached": size / cached,
        "disk_read_direct": size / direct,
    }


def sample_data(blob_dirs: list[Path], limit: int) -> bytes:
    """Up to ``limit`` bytes of gzip layer blobs, largest first."""
    blobs = sorted(
        (p for d in blob_dirs for p in d.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: -p.stat().st_size,
    )
    out = bytearray()
    for blob in blobs:
        if len(out) >= limit:
            break
        out += blob.read_bytes()[: limit - len(out)]
    return bytes(out)


def cpu(data: bytes) -> dict[str, float]:
    cores = os.cpu_count() or 1
    view = memoryview(data)
    chunks = [view[i : i + MiB] for i in range(0, len(view), MiB)]

    def sha() -> int:
        h = hashlib.sha256()
        for c in chunks:
            h.update(c)
        return len(data)

    def compress_with(threads: int) -> Callable[[], int]:
        cctx = zstandard.ZstdCompressor(level=3, threads=threads)

        def run() -> int:
            cctx.compress(data)
            return len(data)

        return run

    frame = zstandard.ZstdCompressor(level=3).compress(data)

    def decompress() -> int:
        return len(zstandard.ZstdDecompressor().decompress(frame))

    # All threads: one frame per core, decompressed concurrently (a single zstd
    # frame cannot be decompressed in parallel; this is the machine's ceiling).
    part = -(-len(data) // cores)
    frames = [
        zstandard.ZstdCompressor(level=3).compress(data[i : i + part])
        for i in range(0, len(data), part)
    ]
    pool = ThreadPoolExecutor(cores)

    def decompress_all() -> int:
        sizes = pool.map(lambda f: len(zstandard.ZstdDecompressor().decompress(f)), frames)
        return sum(sizes)

    try:
        return {
            "sha256_1core": _rate(sha),
            "zstd3_compress_1thread": _rate(compress_with(0)),
            "zstd3_compress_all_threads": _rate(compress_with(-1)),
            "zstd3_decompress_1thread": _rate(decompress),
            "zstd3_decompress_all_threads": _rate(decompress_all),
            "zstd3_ratio_on_layers": len(data) / len(frame),
        }
    finally:
        pool.shutdown()


def measure(work: Path, blob_dirs: list[Path], dd_mib: int, probe_mib: int) -> dict[str, Any]:
    data = sample_data(blob_dirs, probe_mib * MiB)
    rates: dict[str, Any] = {**disk(work, dd_mib), **cpu(data)}
    rates["probe_bytes"] = len(data)
    rates["dd_bytes"] = dd_mib * MiB
    return rates


def limit_seconds(
    step: str, rates: dict[str, Any], raw: int, packed: int, *, all_cores: bool = False
) -> float:
    """The shortest time the step could take on this machine with perfect overlap of
    its unavoidable stages: the slowest of them sets the pace. Export counts the
    durable write (``conv=fdatasync``) because airbundle fsyncs the bundle.

    raw: bytes of the uncompressed tar stream; packed: bytes of the bundle file.
    The network read of export is not counted (its speed is the registry's, unknown).
    With ``all_cores``, sha256 and decompression run on every core at once (members
    hashed in parallel): the floor of a perfectly parallel reader, reported beside
    the one-core floor the targets were first set against.
    """
    cores = (os.cpu_count() or 1) if all_cores else 1
    rates = dict(rates)
    rates["sha256_1core"] = rates["sha256_1core"] * cores
    if all_cores:
        rates["zstd3_decompress_1thread"] = max(
            rates["zstd3_decompress_all_threads"], rates["zstd3_decompress_1thread"]
        )
    if step == "export":
        parts = [
            raw / rates["sha256_1core"],
            raw / max(rates["zstd3_compress_all_threads"], rates["zstd3_compress_1thread"]),
            packed / rates["disk_write"],
        ]
    elif step == "verify":
        parts = [
            raw / rates["zstd3_decompress_1thread"],
            raw / rates["sha256_1core"],
            packed / rates["disk_read_cached"],
        ]
    elif step == "import":
        parts = [raw / rates["zstd3_decompress_1thread"], raw / rates["sha256_1core"]]
    else:
        raise ValueError(step)
    return float(max(parts))
