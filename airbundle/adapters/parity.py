"""Parity volumes on media: encode them, check a set, rebuild what is lost.

A set with parity has k data volumes (shards 0..k-1) and m parity volumes
(shards k..k+m-1), all `shard_size` long as the code sees them (shorter data
volumes padded with zeros, the first volume's unhashed prefix region read as
zeros: `airbundle sign` rewrites it). A parity volume's file is a copy of
that prefix region followed by its shard (docs/bundle-format.md).

Everything works in stripes (Limits.parity_stripe_bytes per shard, all of a
set's stripes in flight within Limits.parity_memory_bytes), so memory stays
flat whatever the volume size. A stripe's sources are private mappings of the
volumes handed to the kernel where they lie (no copy; faulted in by
MADV_POPULATE_READ, so a read error is an error, not a SIGBUS; read into
buffers where that is not possible), and Limits.parity_workers stripes are
computed side by side on threads while the caller hashes the one before:
ISA-L, the page faults, pwrite and sha256 all run without the GIL. Rebuilt
bytes are always checked against the signed index before anything uses them.

* `encode_parity`: at the end of an export or split, the second pass over the
  finished data volumes that writes the parity volumes.
* `RepairingVolumes`: the data volumes of a set read as if whole: each is
  checked against the signed index before its first byte is handed out, and
  a missing or damaged one is rebuilt from parity (on the fly, or once into a
  scratch folder) after the rebuilt bytes proved right. The volume-reading
  layer (adapters/media.py, adapters/bundleaccess.py) reads through it, so
  verify, import, join and serve --bundle all repair the same way.
* `repair_set`: write the rebuilt volumes into a folder, byte-identical.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from airbundle.adapters.fsutil import TEMP_MARK, fsync_dir
from airbundle.adapters.gfkernel import Kernel, load_kernel
from airbundle.errors import IntegrityError, TargetError, UsageError
from airbundle.format import erasure
from airbundle.format.digest import Digest
from airbundle.format.volumes import ParityInfo, VolumeEntry, VolumeIndex, parity_name
from airbundle.limits import DEFAULT_LIMITS, Limits

_STRIPE_ALIGN = 1 << 12
_UNKNOWN = Digest("sha256", "0" * 64)  # a parity volume's, until it is written


def stripe_size(shards: int, limits: Limits = DEFAULT_LIMITS) -> int:
    """Bytes per shard in one stripe, when `shards` stripes are held at once."""
    share = min(limits.parity_stripe_bytes, limits.parity_memory_bytes // max(1, shards))
    return max(_STRIPE_ALIGN, share // _STRIPE_ALIGN * _STRIPE_ALIGN)


class ShardError(Exception):
    """A shard could not be read whole (it ends early, or the media failed)."""


@dataclass(frozen=True)
class Layout:
    """Where each shard of a set with parity lies on the media."""

    folder: Path
    index: VolumeIndex

    @property
    def parity(self) -> ParityInfo:
        assert self.index.parity is not None
        return self.index.parity

    @property
    def k(self) -> int:
        return len(self.index.volumes)

    @property
    def m(self) -> int:
        return self.parity.count

    @property
    def shard_size(self) -> int:
        return self.parity.shard_size

    @property
    def prefix(self) -> int:
        """The first volume's unhashed region, copied at the start of each parity volume."""
        return self.index.volumes[0].covered_from

    def entry(self, shard: int) -> VolumeEntry:
        if shard < self.k:
            return self.index.volumes[shard]
        return self.parity.volumes[shard - self.k]

    def path(self, shard: int) -> Path:
        return self.folder / self.entry(shard).name

    def hashed(self, shard: int) -> tuple[int, int]:
        """[start, end) of the shard (shard offsets) that the index hashes."""
        if shard < self.k:
            entry = self.entry(shard)
            return entry.covered_from, entry.size
        return 0, self.shard_size

    def read(self, fd: int, shard: int, offset: int, buf: bytearray, n: int) -> None:
        """buf[:n] = the shard's bytes [offset, offset + n) as the code sees them."""
        view = memoryview(buf)
        if shard < self.k:
            have = max(0, min(n, self.entry(shard).size - offset))
            _pread_into(fd, view[:have], offset)
            view[have:n] = _zeros(n - have)
            if shard == 0 and offset < self.prefix:
                zero = min(n, self.prefix - offset)
                view[:zero] = _zeros(zero)
        else:
            _pread_into(fd, view[:n], self.prefix + offset)

    def file_offset(self, shard: int, offset: int) -> int:
        return offset if shard < self.k else self.prefix + offset

    def view(
        self, fd: int, shard: int, offset: int, n: int, spare: bytearray
    ) -> tuple[memoryview, mmap.mmap | None]:
        """The shard's bytes [offset, offset + n) as the code sees them: a
        mapping of its file where the file holds them all (release the view,
        then close the map), else a copy in `spare`."""
        if shard < self.k and offset >= self.entry(shard).size:
            return _zeros(n), None  # past a short last volume: read by the kernel only
        inside = shard >= self.k or (
            offset + n <= self.entry(shard).size and not (shard == 0 and offset < self.prefix)
        )
        if inside and (mapped := _map(fd, self.file_offset(shard, offset), n)) is not None:
            return mapped
        self.read(fd, shard, offset, spare, n)
        return memoryview(spare)[:n], None


# Zeros for the padding of short volumes, made once. A bytearray, so that
# ISA-L can take its address (Layout.view); nothing ever writes it.
_ZEROS = [bytearray()]


def _zeros(n: int) -> memoryview:
    """n zero bytes, without making them anew for every stripe."""
    zeros = _ZEROS[0]
    if len(zeros) < n:
        zeros = _ZEROS[0] = bytearray(n)
    return memoryview(zeros)[:n]


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], offset + got)
        except OSError as exc:
            raise ShardError(f"read error ({exc.strerror})") from None
        if n == 0:
            raise ShardError(f"it ends at byte {offset + got}")
        got += n


# Linux >= 5.14: fault a mapping in, and say so (EFAULT, EIO) where a read
# fails, instead of a SIGBUS on first touch: a scratched disc or a file cut
# short under us stays an error we name, never a crash.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_mapping = [hasattr(mmap.mmap, "madvise")]  # cleared when the kernel lacks it


def _map(fd: int, offset: int, n: int) -> tuple[memoryview, mmap.mmap] | None:
    """A private mapping of file bytes [offset, offset + n), faulted in; None
    where mapping is not possible here (then the caller reads)."""
    if not _mapping[0]:
        return None
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(fd, offset + n - base, access=mmap.ACCESS_COPY, offset=base)
    except (OSError, ValueError):
        return None
    try:
        mapped.madvise(_MADV_POPULATE_READ)
    except OSError as exc:
        mapped.close()
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            _mapping[0] = False
            return None
        raise ShardError(f"read error ({exc.strerror})") from None
    return memoryview(mapped)[offset - base : offset - base + n], mapped


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _pread_exactly(fd: int, n: int, offset: int) -> bytes:
    """n bytes at offset, copied once (the common case: one pread)."""
    try:
        data = os.pread(fd, n, offset)
    except OSError as exc:
        raise ShardError(f"read error ({exc.strerror})") from None
    if len(data) == n:
        return data
    buf = bytearray(n)
    _pread_into(fd, memoryview(buf), offset)
    return bytes(buf)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def _create(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


# -- encode ------------------------------------------------------------------------


def encode_parity(
    folder: Path,
    index: VolumeIndex,
    data_paths: Sequence[Path],
    count: int,
    *,
    kernel: Kernel | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[ParityInfo, list[Path]]:
    """Write `count` parity volumes for finished data volumes (still at their
    temporary `data_paths`) into temporary files beside them, fsynced; return
    the parity section and those files, to be renamed by the caller."""
    k = len(index.volumes)
    try:
        erasure.check_shape(k, count)
    except ValueError:
        raise UsageError(
            f"{k} data volumes and {count} parity volumes: the code allows at most "
            f"{erasure.MAX_SHARDS} volumes in all",
            hint="use larger volumes (--split-size) or fewer parity volumes",
        ) from None
    kern = kernel or load_kernel()
    shard = index.volumes[0].size
    prefix = index.volumes[0].covered_from
    draft = ParityInfo(
        erasure.SCHEME,
        shard,
        tuple(
            VolumeEntry(parity_name(index.bundle, j), prefix + shard, prefix, _UNKNOWN)
            for j in range(1, count + 1)
        ),
    )
    layout = Layout(folder, VolumeIndex(index.bundle, index.total_length, index.volumes, draft))
    temps = [folder / f"{TEMP_MARK}{v.name}.part" for v in draft.volumes]
    hashes = [hashlib.sha256() for _ in range(count)]
    fds = [_open(p) for p in data_paths]
    outs: list[int] = []

    def write(number: int, stripe: list[memoryview]) -> None:  # on a worker
        for fd, view in zip(outs, stripe, strict=True):
            _pwrite_all(fd, view, prefix + number * encoder.chunk)

    try:
        # Encoding is rebuilding the parity shards from the data shards.
        encoder = _Rebuild(
            layout,
            range(k),
            range(k, k + count),
            fds.__getitem__,
            kern,
            limits,
            matrix=erasure.parity_matrix(k, count),
        )
        head = bytearray(prefix)
        _pread_into(fds[0], memoryview(head), 0)
        for temp in temps:
            outs.append(_create(temp))
            _pwrite_all(outs[-1], memoryview(head), 0)
        for _, stripe in encoder.run(write):
            for h, view in zip(hashes, stripe, strict=True):
                h.update(view)
        for fd in outs:
            os.fsync(fd)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    finally:
        for fd in (*outs, *fds):
            os.close(fd)
    entries = tuple(
        VolumeEntry(v.name, v.size, v.covered_from, Digest("sha256", h.hexdigest()))
        for v, h in zip(draft.volumes, hashes, strict=True)
    )
    return ParityInfo(erasure.SCHEME, shard, entries), temps


# -- rebuild -----------------------------------------------------------------------


class _Slot:
    """The buffers of one stripe in flight: its outputs, and inputs for the
    sources that cannot be mapped (a short last volume, the prefix region)."""

    def __init__(self, sources: int, rows: int, chunk: int) -> None:
        self.chunk = chunk
        self.outs = [bytearray(chunk) for _ in range(rows)]
        self._spares: list[bytearray | None] = [None] * sources

    def spare(self, i: int) -> bytearray:
        buf = self._spares[i]
        if buf is None:
            buf = self._spares[i] = bytearray(self.chunk)
        return buf


class _Rebuild:
    """The `wanted` shards computed stripe by stripe from k `sources`.

    Each stripe's sources are mapped, not copied, and handed to the kernel
    where they lie (Layout.view); `run` computes `Limits.parity_workers`
    stripes side by side on threads while the caller hashes the previous one.
    Every file descriptor is resolved here, on the caller's thread."""

    def __init__(
        self,
        layout: Layout,
        sources: Sequence[int],
        wanted: Sequence[int],
        fds: Callable[[int], int],
        kernel: Kernel,
        limits: Limits,
        *,
        matrix: erasure.Matrix | None = None,
    ) -> None:
        self.layout = layout
        self.sources = list(sources)
        self.wanted = list(wanted)
        self._fds = {s: fds(s) for s in self.sources}
        self._kernel = kernel
        self._prepared = kernel.prepare(
            matrix or erasure.rebuild_matrix(layout.k, layout.m, self.sources, self.wanted)
        )
        self.workers = max(1, limits.parity_workers)
        self.chunk = stripe_size((layout.k + len(self.wanted)) * (self.workers + 1), limits)
        self._slot: _Slot | None = None
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()

    def slot(self) -> _Slot:
        return _Slot(len(self.sources), len(self.wanted), self.chunk)

    def copy(self, number: int) -> list[bytes]:
        """Stripe `number` of each wanted shard, as bytes of its own (thread-safe)."""
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            slot = self.slot()
        try:
            return [bytes(view) for view in self.compute(number, slot)]
        finally:
            self._free.put(slot)

    def compute(self, number: int, slot: _Slot) -> list[memoryview]:
        """Stripe `number` of each wanted shard, into `slot` (thread-safe
        with a slot per thread)."""
        offset = number * self.chunk
        n = min(self.chunk, self.layout.shard_size - offset)
        views: list[memoryview] = []
        maps: list[mmap.mmap] = []
        try:
            for i, s in enumerate(self.sources):
                try:
                    view, mapped = self.layout.view(self._fds[s], s, offset, n, slot.spare(i))
                except (ShardError, OSError) as exc:
                    raise _SourceError(s, str(exc)) from None
                views.append(view)
                if mapped is not None:
                    maps.append(mapped)
            self._kernel.apply(self._prepared, views, slot.outs, n)
        finally:
            for view in views:
                view.release()
            for mapped in maps:
                mapped.close()
        return [memoryview(out)[:n] for out in slot.outs]

    def stripe(self, number: int) -> list[memoryview]:
        """Stripe `number` of each wanted shard (views valid until the next call)."""
        if self._slot is None:
            self._slot = self.slot()
        return self.compute(number, self._slot)

    def run(
        self, after: Callable[[int, list[memoryview]], None] | None = None
    ) -> Iterator[tuple[int, list[memoryview]]]:
        """Every stripe in order, each valid until the next; `after` runs on
        the thread that computed it (the writes, which need no order)."""
        if self.workers == 1 or self.stripes == 1:
            slot = self.slot()
            for number in range(self.stripes):
                stripe = self.compute(number, slot)
                if after is not None:
                    after(number, stripe)
                yield number, stripe
            return

        def job(number: int, slot: _Slot) -> list[memoryview]:
            stripe = self.compute(number, slot)
            if after is not None:
                after(number, stripe)
            return stripe

        pending: collections.deque[tuple[int, Future[list[memoryview]], _Slot]] = (
            collections.deque()
        )
        with ThreadPoolExecutor(self.workers, thread_name_prefix="parity") as pool:
            try:
                for number in range(min(self.stripes, self.workers + 1)):
                    slot = self.slot()
                    pending.append((number, pool.submit(job, number, slot), slot))
                while pending:
                    number, future, slot = pending.popleft()
                    yield number, future.result()
                    if (after_that := number + self.workers + 1) < self.stripes:
                        pending.append((after_that, pool.submit(job, after_that, slot), slot))
            finally:
                for _, future, _ in pending:
                    future.cancel()

    @property
    def stripes(self) -> int:
        return -(-self.layout.shard_size // self.chunk)


class _SourceError(Exception):
    def __init__(self, shard: int, problem: str) -> None:
        super().__init__(problem)
        self.shard = shard
        self.problem = problem


class _Hashed:
    """sha256 of a shard's hashed range, fed with its stripes in order."""

    def __init__(self, layout: Layout, shard: int) -> None:
        self._start, self._end = layout.hashed(shard)
        self._h = hashlib.sha256()

    def update(self, offset: int, view: memoryview) -> None:
        lo = max(self._start, offset)
        hi = min(self._end, offset + len(view))
        if lo < hi:
            self._h.update(view[lo - offset : hi - offset])

    def digest(self) -> Digest:
        return Digest("sha256", self._h.hexdigest())


def check_shard(layout: Layout, shard: int) -> str | None:
    """None if the shard's file is there, of its size, with its signed digest;
    else what is wrong with it."""
    entry = layout.entry(shard)
    path = layout.folder / entry.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size != entry.size:
        return f"{size} bytes, the signed index says {entry.size}"
    h = hashlib.sha256()
    buf = bytearray(DEFAULT_LIMITS.io_chunk_bytes)
    try:
        with path.open("rb", buffering=0) as fh:
            fh.seek(entry.covered_from)
            while got := fh.readinto(buf):
                h.update(memoryview(buf)[:got])
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if h.hexdigest() != entry.digest.hex:
        return "its bytes do not match the signed index"
    return None


def check_shards(layout: Layout, shards: Sequence[int], limits: Limits) -> dict[int, str]:
    """check_shard of each, `limits.parity_workers` at a time (hashlib and
    the reads run without the GIL): the bad ones and their problems."""
    if not shards:
        return {}
    with ThreadPoolExecutor(max(1, limits.parity_workers)) as pool:
        problems = pool.map(lambda s: check_shard(layout, s), shards)
        return {s: p for s, p in zip(shards, problems, strict=True) if p is not None}


def size_problem(layout: Layout, shard: int) -> str | None:
    """What a stat says is wrong with a shard's file (missing, wrong size)."""
    entry = layout.entry(shard)
    try:
        size = (layout.folder / entry.name).stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size < entry.size:
        return f"truncated ({size} of {entry.size} bytes)"
    if size > entry.size:
        return f"{size - entry.size} bytes too long"
    return None


def unrecoverable(layout: Layout, description: str, bad: dict[int, str]) -> IntegrityError:
    """More volumes lost than the parity rebuilds: name them, and how many more are needed."""
    names = "; ".join(f"{layout.entry(s).name}: {problem}" for s, problem in sorted(bad.items()))
    more = len(bad) - layout.m
    return IntegrityError(
        f"{description}: {len(bad)} volumes are missing or damaged ({names}); its "
        f"{layout.m} parity volume(s) rebuild at most {layout.m}: {more} more needed",
        hint=f"copy at least {more} of those volumes again from the original media",
    )


class RepairingVolumes:
    """The data volumes of a set with parity, read whole or rebuilt.

    Thread-safe: checks and rebuilds happen under one lock; reads of a volume
    found whole go straight to the media."""

    def __init__(
        self,
        folder: Path,
        index: VolumeIndex,
        description: str,
        *,
        scratch: Path | None = None,
        kernel: Kernel | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.layout = Layout(folder, index)
        self.description = description
        self._scratch = scratch
        self._kernel = kernel
        self._limits = limits
        self._lock = threading.RLock()
        self._state: dict[int, str | None] = {}  # shard -> None (whole) or its problem
        self._gates: dict[int, threading.Lock] = {}  # one check of a volume at a time
        self._fds: dict[int, int] = {}
        self._scratch_fds: dict[int, int] = {}
        self._rebuilds: dict[int, _Rebuild] = {}
        self._scratch_files: dict[int, Path] = {}
        self._cache: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        # The next stripes of a rebuilt volume, computed while the reader
        # uses this one (rebuilt volumes are mostly read front to back).
        self._ahead: dict[tuple[int, int], Future[bytes]] = {}
        self._ahead_pool: ThreadPoolExecutor | None = None
        self.rebuilt: dict[str, str] = {}  # volume name -> what was wrong with it

    def survey(self) -> dict[str, str]:
        """Stat every volume, data and parity: the missing and wrong-sized ones
        (refused here if more than the parity rebuilds)."""
        with self._lock:
            bad = {}
            for s in range(self.layout.k + self.layout.m):
                problem = size_problem(self.layout, s)
                if problem is not None:
                    self._state[s] = problem
                    bad[s] = problem
            if len(bad) > self.layout.m:
                raise unrecoverable(self.layout, self.description, bad)
            return {self.layout.entry(s).name: p for s, p in bad.items()}

    def present(self, volume: int) -> bool:
        """The volume's own file is there with its size (known without reading it)."""
        return self._state.get(volume, None) is None

    def on_media(self, volume: int) -> bool:
        """The volume's bytes are read from its own file (it is whole)."""
        self._ensure(volume)
        with self._lock:
            return self._state[volume] is None

    def pread(self, volume: int, offset: int, n: int) -> bytes:
        """Bytes [offset, offset + n) of data volume `volume` (0-based), whole."""
        self._ensure(volume)
        with self._lock:
            whole = self._state[volume] is None
            scratch = self._scratch_files.get(volume)
        if whole or scratch is not None:
            fd = self._fd(volume) if whole else self._scratch_fd(volume)
            try:
                return _pread_exactly(fd, n, offset)
            except ShardError as exc:
                raise IntegrityError(
                    f"{self.description}: {self.layout.entry(volume).name}: {exc}"
                ) from None
        return self._rebuilt_bytes(volume, offset, n)

    def _fd(self, shard: int) -> int:
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = _open(self.layout.path(shard))
            return fd

    def _scratch_fd(self, volume: int) -> int:
        with self._lock:
            fd = self._scratch_fds.get(volume)
            if fd is None:
                fd = self._scratch_fds[volume] = _open(self._scratch_files[volume])
            return fd

    def _ensure(self, volume: int) -> None:
        """The volume checked, and rebuilt if it is not whole. Readers of
        different volumes (the sections of ops/sections.py) check theirs side
        by side; a rebuild holds the set's lock (it may judge other volumes)."""
        with self._lock:
            if volume in self._state and (
                self._state[volume] is None or volume in self._rebuilds
            ):
                return
            gate = self._gates.setdefault(volume, threading.Lock())
        with gate:
            with self._lock:
                known = volume in self._state
            if not known:
                problem = check_shard(self.layout, volume)
                with self._lock:
                    self._state.setdefault(volume, problem)
            with self._lock:
                if self._state[volume] is not None and volume not in self._rebuilds:
                    self._rebuild(volume)

    def _rebuild(self, volume: int) -> None:
        """Rebuild one data volume, check it against the signed index, keep the
        way to read it (its sources, or its scratch copy)."""
        kernel = self._kernel or load_kernel()
        while True:
            candidates = [
                s
                for s in range(self.layout.k + self.layout.m)
                if s != volume and self._state.get(s) is None
            ]
            if len(candidates) < self.layout.k:
                for s in range(self.layout.k + self.layout.m):
                    if s not in self._state:
                        self._state[s] = check_shard(self.layout, s)
                bad = {s: p for s, p in self._state.items() if p is not None}
                raise unrecoverable(self.layout, self.description, bad)
            sources = candidates[: self.layout.k]
            rebuild = _Rebuild(self.layout, sources, [volume], self._fd, kernel, self._limits)
            try:
                digest, scratch = self._verify_pass(rebuild, volume)
            except _SourceError as exc:
                self._state[exc.shard] = exc.problem
                continue
            entry = self.layout.entry(volume)
            if digest == entry.digest:
                break
            # A source we had not checked yet is damaged too: find it, try others.
            if scratch is not None:
                scratch.unlink(missing_ok=True)
            unchecked = [s for s in sources if s not in self._state]
            if not unchecked:
                raise IntegrityError(
                    f"{self.description}: {entry.name} rebuilt from parity does not match the "
                    "signed index although every volume it was rebuilt from does"
                )
            for s in unchecked:
                self._state[s] = check_shard(self.layout, s)
        self._rebuilds[volume] = rebuild
        if scratch is not None:
            self._scratch_files[volume] = scratch
        self.rebuilt[self.layout.entry(volume).name] = self._state[volume] or "damaged"

    def _verify_pass(self, rebuild: _Rebuild, volume: int) -> tuple[Digest, Path | None]:
        hashed = _Hashed(self.layout, volume)
        scratch: Path | None = None
        fd: int | None = None
        if self._scratch is not None:
            scratch = self._scratch / f"{TEMP_MARK}{self.layout.entry(volume).name}.rebuilt"
            try:
                fd = _create(scratch)
            except OSError as exc:
                raise UsageError(
                    f"cannot write in the scratch folder {self._scratch}: {exc.strerror}"
                ) from None
        size = self.layout.entry(volume).size

        def write(number: int, stripe: list[memoryview]) -> None:  # on a worker
            offset = number * rebuild.chunk
            if fd is not None and offset < size:
                _pwrite_all(fd, stripe[0][: size - offset], offset)

        try:
            for number, (out,) in rebuild.run(write):
                hashed.update(number * rebuild.chunk, out)
            if fd is not None and volume == 0:
                # the code saw zeros there
                _pwrite_all(fd, memoryview(self._prefix_copy(rebuild)), 0)
        except BaseException:
            if scratch is not None:
                scratch.unlink(missing_ok=True)
            raise
        finally:
            if fd is not None:
                os.close(fd)
        return hashed.digest(), scratch

    def _rebuilt_bytes(self, volume: int, offset: int, n: int) -> bytes:
        """From the rebuilt stripes (cached), the first volume's prefix region
        from a parity volume's copy of it."""
        rebuild = self._rebuilds[volume]
        parts: list[bytes | memoryview] = []
        end = offset + n
        pos = offset
        while pos < end:
            if volume == 0 and pos < self.layout.prefix:
                stop = min(end, self.layout.prefix)
                parts.append(self._prefix_copy(rebuild)[pos:stop])
                pos = stop
                continue
            number = pos // rebuild.chunk
            data = self._cached_stripe(volume, number, rebuild)
            lo = pos - number * rebuild.chunk
            hi = min(len(data), end - number * rebuild.chunk)
            parts.append(memoryview(data)[lo:hi])
            pos += hi - lo
        return b"".join(parts)

    def _cached_stripe(self, volume: int, number: int, rebuild: _Rebuild) -> bytes:
        with self._lock:
            key = (volume, number)
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
            ahead = self._ahead.pop(key, None)
            try:
                data = ahead.result() if ahead is not None else bytes(rebuild.stripe(number)[0])
            except _SourceError as exc:
                name = self.layout.entry(exc.shard).name
                raise IntegrityError(
                    f"{self.description}: {name}, read to rebuild "
                    f"{self.layout.entry(volume).name}, failed: {exc.problem}",
                    hint="the media changed while it was read; copy the set again",
                ) from None
            self._cache[key] = data
            while len(self._cache) > self._limits.parity_cached_stripes:
                self._cache.popitem(last=False)
            self._read_ahead(volume, number, rebuild)
            return data

    def _read_ahead(self, volume: int, number: int, rebuild: _Rebuild) -> None:
        """Start the next `parity_workers` stripes of the volume on threads."""
        if self._ahead_pool is None:
            self._ahead_pool = ThreadPoolExecutor(rebuild.workers, thread_name_prefix="parity")
        window = range(number + 1, min(rebuild.stripes, number + 1 + rebuild.workers))
        for stale in [key for key in self._ahead if key[0] != volume or key[1] not in window]:
            self._ahead.pop(stale).cancel()
        for later in window:
            key = (volume, later)
            if key not in self._cache and key not in self._ahead:
                self._ahead[key] = self._ahead_pool.submit(lambda n: rebuild.copy(n)[0], later)

    def _prefix_copy(self, rebuild: _Rebuild) -> bytes:
        """The first volume's prefix region, from a parity volume used in the rebuild."""
        source = next(s for s in rebuild.sources if s >= self.layout.k)
        buf = bytearray(self.layout.prefix)
        _pread_into(self._fd(source), memoryview(buf), 0)
        return bytes(buf)

    def check_parity(self) -> dict[str, str]:
        """Check every parity volume not checked yet: names of the bad ones."""
        with self._lock:
            parity = range(self.layout.k, self.layout.k + self.layout.m)
            unchecked = [s for s in parity if s not in self._state]
            problems = check_shards(self.layout, unchecked, self._limits)
            self._state.update({s: problems.get(s) for s in unchecked})
            return {
                self.layout.entry(s).name: p
                for s, p in self._state.items()
                if s >= self.layout.k and p is not None
            }

    def close(self) -> None:
        with self._lock:
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
            if self._ahead_pool is not None:
                self._ahead_pool.shutdown(wait=True)
                self._ahead_pool = None
            for fd in (*self._fds.values(), *self._scratch_fds.values()):
                os.close(fd)
            self._fds.clear()
            self._scratch_fds.clear()
            for path in self._scratch_files.values():
                path.unlink(missing_ok=True)
            self._scratch_files.clear()


class RepairingStream:
    """A read()-only stream over the data volumes of a RepairingVolumes, in order."""

    def __init__(self, volumes: RepairingVolumes) -> None:
        self._volumes = volumes
        self._sizes = [v.size for v in volumes.layout.index.volumes]
        self._number = 0
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        limit = n if n > 0 else DEFAULT_LIMITS.io_chunk_bytes
        while self._number < len(self._sizes):
            left = self._sizes[self._number] - self._pos
            if left > 0:
                data = self._volumes.pread(self._number, self._pos, min(limit, left))
                self._pos += len(data)
                return data
            self._number += 1
            self._pos = 0
        return b""

    def close(self) -> None:
        self._volumes.close()


# -- repair into a folder ----------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    written: dict[str, str]  # volume name -> what was wrong with it
    whole: int  # volumes found whole


def repair_set(
    folder: Path,
    index: VolumeIndex,
    description: str,
    output: Path,
    *,
    kernel: Kernel | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> RepairResult:
    """The bad volumes rebuilt in one pass from k others, checked against the
    signed index, and written into `output` (atomically: a volume appears
    only once it is right). Every volume ends up checked: those the rebuild
    did not read by their sha256, those it read by the rebuilt volumes
    matching the index (each rebuilt byte depends on every source's byte at
    that offset: the inverse of a Cauchy matrix has no zero), and if they do
    not, each source by its sha256 before another try."""
    layout = Layout(folder, index)
    total = layout.k + layout.m
    bad = {s: p for s in range(total) if (p := size_problem(layout, s)) is not None}
    if len(bad) > layout.m:
        raise unrecoverable(layout, description, bad)
    present = [s for s in range(total) if s not in bad]
    if not bad:
        # Nothing missing: a full check finds what is damaged.
        bad = check_shards(layout, present, limits)
        if len(bad) > layout.m:
            raise unrecoverable(layout, description, bad)
        if not bad:
            return RepairResult({}, total)
        checked, beside = set(present), []
    else:
        # The volumes no rebuild reads are checked beside the first pass (one
        # found bad only adds a volume to rebuild, from the same sources);
        # the others by the rebuild itself.
        checked, beside = set(), present[layout.k :]
    written: set[int] = set()
    while True:
        sources = [s for s in range(total) if s not in bad][: layout.k]
        wanted = [s for s in sorted(bad) if s not in written]
        with ThreadPoolExecutor(1) as pool:
            side = pool.submit(check_shards, layout, beside, limits)
            try:
                _repair_pass(layout, description, sources, wanted, output, kernel, limits)
            except _MismatchError:
                mismatch = True
            else:
                mismatch = False
                written.update(wanted)
            checked.update(beside)
            bad.update(side.result())
            beside = []
        if mismatch:
            unchecked = [s for s in sources if s not in checked]
            if not unchecked:
                raise IntegrityError(
                    f"{description}: volumes rebuilt from parity do not match the signed "
                    "index although every volume they were rebuilt from does"
                ) from None
            checked.update(unchecked)
            bad.update(check_shards(layout, unchecked, limits))
            if len(bad) > layout.m:
                raise unrecoverable(layout, description, bad) from None
            continue
        if all(s in written for s in bad):
            return RepairResult(
                {layout.entry(s).name: bad[s] for s in sorted(bad)}, total - len(bad)
            )


class _MismatchError(Exception):
    """A rebuilt volume does not match the signed index (a source is damaged)."""


def _repair_pass(
    layout: Layout,
    description: str,
    sources: list[int],
    wanted: list[int],
    output: Path,
    kernel: Kernel | None,
    limits: Limits,
) -> None:
    fds: dict[int, int] = {}

    def fd(shard: int) -> int:
        if shard not in fds:
            fds[shard] = _open(layout.path(shard))
        return fds[shard]

    temps = {s: output / f"{TEMP_MARK}{layout.entry(s).name}.part" for s in wanted}
    try:
        output.mkdir(parents=True, exist_ok=True)
        _write_rebuilt(layout, sources, wanted, fd, temps, kernel or load_kernel(), limits)
        for s in wanted:
            temps[s].replace(output / layout.entry(s).name)
        fsync_dir(output)
    except _SourceError as exc:
        raise IntegrityError(
            f"{description}: {layout.entry(exc.shard).name} failed while it was read: "
            f"{exc.problem}",
            hint="the media changed while it was read; run repair again",
        ) from None
    except OSError as exc:
        raise TargetError(
            f"cannot write the rebuilt volumes into {output}: {exc.strerror}"
        ) from exc
    finally:
        for f in fds.values():
            os.close(f)
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def _write_rebuilt(
    layout: Layout,
    sources: list[int],
    wanted: list[int],
    fd: Callable[[int], int],
    temps: dict[int, Path],
    kernel: Kernel,
    limits: Limits,
) -> None:
    rebuild = _Rebuild(layout, sources, wanted, fd, kernel, limits)
    prefix = bytearray(layout.prefix)
    # The prefix region: volume 1's if it is a source (sources are in order),
    # else the copy in a parity volume that is.
    head = 0 if sources[0] == 0 else next(s for s in sources if s >= layout.k)
    _pread_into(fd(head), memoryview(prefix), 0)
    hashes = {s: _Hashed(layout, s) for s in wanted}
    outs: dict[int, int] = {}

    def write(number: int, stripe: list[memoryview]) -> None:  # on a worker
        offset = number * rebuild.chunk
        for s, out in zip(wanted, stripe, strict=True):
            if s >= layout.k:
                _pwrite_all(outs[s], out, layout.prefix + offset)
                continue
            lo = max(offset, layout.prefix if s == 0 else 0)
            hi = min(offset + len(out), layout.entry(s).size)
            if lo < hi:
                _pwrite_all(outs[s], out[lo - offset : hi - offset], lo)

    try:
        for s in wanted:
            outs[s] = _create(temps[s])
            if s == 0 or s >= layout.k:
                _pwrite_all(outs[s], memoryview(prefix), 0)
        for number, stripe in rebuild.run(write):
            for s, out in zip(wanted, stripe, strict=True):
                hashes[s].update(number * rebuild.chunk, out)
        for f in outs.values():
            os.fsync(f)
    finally:
        for f in outs.values():
            os.close(f)
    if any(hashes[s].digest() != layout.entry(s).digest for s in wanted):
        raise _MismatchError


def refresh_prefix_copies(layout: Layout) -> list[str]:
    """After `sign` rewrote the first volume's prefix region: the same bytes
    into each parity volume present (outside what the index hashes), so a
    rebuilt first volume carries the new signatures. Names those written."""
    head = bytearray(layout.prefix)
    with layout.path(0).open("rb") as fh:
        _pread_into(fh.fileno(), memoryview(head), 0)
    done = []
    for s in range(layout.k, layout.k + layout.m):
        path = layout.path(s)
        if size_problem(layout, s) is not None:
            continue
        with path.open("r+b") as fh:
            fh.write(head)
            fh.flush()
            os.fsync(fh.fileno())
        done.append(path.name)
    return done


def shards_of(index: VolumeIndex) -> Iterator[VolumeEntry]:
    """Every volume of a set, data then parity."""
    yield from index.volumes
    if index.parity is not None:
        yield from index.parity.volumes
