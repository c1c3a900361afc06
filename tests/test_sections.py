"""A bundle read in sections by several threads (ops/sections.py): verify's and
import's parallel path, against the sequential reader as the judge."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.adapters.bundleaccess import MemberInfo
from airbundle.errors import IntegrityError, MemberDigestError
from airbundle.format.manifest import MemberEntry
from airbundle.format.seektable import member_places, plan_sections
from airbundle.limits import Limits
from airbundle.ops.access import open_bundle_access
from airbundle.ops.sections import read_sections
from airbundle.ops.verify import verify_bundle
from airbundle.ops.volumes import split_bundle
from support.crafting import NOW, World, blob, world
from support.legacy import LEGACY_SAMPLES, gzip_like
from test_access import legacy_policy, mixed_members, text_member, write_signed

MiB = 1 << 20
PARALLEL = Limits(parallel_read_min_bytes=0, read_workers=3)
SEQUENTIAL = Limits(read_workers=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@pytest.fixture(scope="module")
def mixed(env: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    members = [
        *mixed_members(),
        blob(gzip_like(3 * MiB + 17, b"layer-c")),
        blob(text_member(1_500_000, "more")),
    ]
    path = write_signed(tmp_path_factory.mktemp("sections") / "mixed.airbundle", members, env)
    return path, dict(members)


@pytest.fixture(scope="module")
def volumes(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    # Volumes of an odd size: boundaries inside frames, blocks and members.
    path, _ = mixed
    return split_bundle(path, 9000 + 777_777, (env.key,), folder=tmp_path_factory.mktemp("set"))


def collect(path: Path, env: World, workers: int) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}
    lock = threading.Lock()

    def work(info: MemberInfo, chunks: Iterator[bytes]) -> None:
        data = b"".join(chunks)
        with lock:
            assert info.path not in seen, f"{info.path} read twice"
            seen[info.path] = data

    with open_bundle_access(path, env.policy(), at=NOW) as access:
        read_sections(access, work, workers=workers)
    return seen


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("where", ["file", "volume set"])
def test_sections_hand_every_member_once_with_its_bytes(
    env: World,
    mixed: tuple[Path, dict[str, bytes]],
    volumes: Path,
    workers: int,
    where: str,
) -> None:
    path, members = mixed
    assert collect(path if where == "file" else volumes, env, workers) == members


@given(
    st.lists(st.integers(min_value=0, max_value=20 * MiB), min_size=1, max_size=60),
    st.integers(1, 40),
)
def test_sections_are_contiguous_cover_every_member_and_come_largest_first(
    sizes: list[int], parts: int
) -> None:
    from airbundle.format.digest import Digest

    entries = [
        MemberEntry(f"m{i}", size, Digest("sha256", "0" * 64)) for i, size in enumerate(sizes)
    ]
    places = member_places(entries)
    sections = plan_sections(places, parts)
    assert sorted(sections)[0][0] == 0 and sorted(sections)[-1][1] == len(entries)
    for (_, stop), (first, _) in zip(sorted(sections), sorted(sections)[1:], strict=False):
        assert stop == first
    assert all(first < stop for first, stop in sections)
    spans = [places[stop - 1].next - places[first].header for first, stop in sections]
    assert spans == sorted(spans, reverse=True)


def damaged_copy(path: Path, tmp_path: Path, member: str, env: World) -> Path:
    """The bundle with one byte of a raw member's payload flipped: the frames
    keep their sizes, so only the member's sha256 can tell."""
    with open_bundle_access(path, env.policy(), at=NOW) as access:
        spans = access.payload_spans(member)
    assert spans, f"{member} is not stored raw"
    data = bytearray(path.read_bytes())
    data[spans[0].offset + spans[0].length // 2] ^= 0x40
    out = tmp_path / "damaged.airbundle"
    out.write_bytes(bytes(data))
    return out


def raw_member(members: dict[str, bytes], seed: bytes) -> str:
    return next(p for p, d in members.items() if len(d) >= MiB and d == gzip_like(len(d), seed))


def test_a_damaged_member_fails_before_its_reader_commits_and_the_others_are_untouched(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, members = mixed
    bad = raw_member(members, b"layer-a")
    damaged = damaged_copy(path, tmp_path, bad, env)
    committed: list[str] = []
    lock = threading.Lock()

    def work(info: MemberInfo, chunks: Iterator[bytes]) -> None:
        for _ in chunks:  # raises after the last chunk if the bytes are wrong
            pass
        with lock:
            committed.append(info.path)  # as an upload's final PUT: only after

    access = open_bundle_access(damaged, env.policy(), at=NOW)
    with access, pytest.raises(MemberDigestError) as caught:
        read_sections(access, work, workers=3)
    assert f"member {bad!r} is corrupt or was tampered with" in caught.value.message
    assert bad not in committed


def test_one_failing_member_stops_the_members_in_flight_in_other_sections(
    env: World, mixed: tuple[Path, dict[str, bytes]]
) -> None:
    path, members = mixed
    slow = raw_member(members, b"layer-c")  # 4 chunks: long enough to be caught mid-way
    failing = raw_member(members, b"layer-a")
    started = threading.Event()
    finished: list[str] = []

    class RefusedError(Exception):
        pass

    def work(info: MemberInfo, chunks: Iterator[bytes]) -> None:
        if info.path == slow:
            next(chunks)
            started.set()
            for _ in chunks:
                threading.Event().wait(0.05)
        elif info.path == failing:
            assert started.wait(30)
            raise RefusedError(info.path)
        finished.append(info.path)

    with open_bundle_access(path, env.policy(), at=NOW) as access, pytest.raises(RefusedError):
        read_sections(access, work, workers=2)
    assert slow not in finished  # stopped at its next chunk, never committed


@pytest.mark.parametrize("where", ["file", "volume set"])
def test_parallel_and_sequential_verify_agree_on_a_sound_bundle(
    env: World, mixed: tuple[Path, dict[str, bytes]], volumes: Path, where: str
) -> None:
    path = mixed[0] if where == "file" else volumes
    parallel = verify_bundle(path, env.policy(), at=NOW, limits=PARALLEL)
    sequential = verify_bundle(path, env.policy(), at=NOW, limits=SEQUENTIAL)
    assert (parallel.members, parallel.bytes) == (sequential.members, sequential.bytes)
    assert parallel.authenticated.manifest_digest == sequential.authenticated.manifest_digest


def test_parallel_verify_reports_a_damaged_member_as_the_sequential_reader_does(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, members = mixed
    damaged = damaged_copy(path, tmp_path, raw_member(members, b"layer-b"), env)
    errors = []
    for limits in (PARALLEL, SEQUENTIAL):
        with pytest.raises(IntegrityError) as caught:
            verify_bundle(damaged, env.policy(), at=NOW, limits=limits)
        errors.append((type(caught.value), caught.value.message))
    assert errors[0] == errors[1]


def test_parallel_verify_reads_a_bundle_without_a_seek_table_front_to_back() -> None:
    result = verify_bundle(LEGACY_SAMPLES, legacy_policy(), at=NOW, limits=PARALLEL)
    assert result.members > 0


def test_parallel_verify_reports_progress_once_per_byte(
    env: World, mixed: tuple[Path, dict[str, bytes]]
) -> None:
    path, members = mixed
    seen: list[int] = []
    verify_bundle(path, env.policy(), at=NOW, limits=PARALLEL, progress=seen.append)
    assert sum(seen) == sum(len(d) for d in members.values())
