"""Parity volumes: a set that lost up to as many volumes as it has parity
volumes verifies, imports (from read-only media too) and is repaired byte for
byte; one more lost volume is refused, naming them all."""

from __future__ import annotations

import dataclasses
import itertools
import json
import mmap
import shutil
from pathlib import Path
from typing import Any

import pytest

from airbundle.adapters import parity
from airbundle.adapters.gfkernel import IsalKernel, Kernel, PythonKernel, find_isal
from airbundle.adapters.parity import Layout, RepairingVolumes, encode_parity, repair_set
from airbundle.errors import IntegrityError, UsageError
from airbundle.format.volumes import VolumeIndex
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.access import open_bundle_access
from airbundle.ops.keys import load_signing_key
from airbundle.ops.sign import sign_bundle
from airbundle.ops.verify import verify_bundle
from airbundle.ops.volumes import repair_volumes, split_bundle
from support.bundles import export, import_, repo_entry, trust_policy, write_spec
from support.cli import run
from support.env import AIRBUNDLE
from support.keys import KeyPair, make_key
from support.parity import (
    DAMAGE,
    ParitySet,
    damage,
    files_in,
    layer_layout,
    parity_set,
    tree_state,
)
from support.serve_bundle import run_read_only

EPOCH = 1_700_000_000
VOLUME = 60_000

# name -> (content bytes, volume size, parity): the last volume shorter; one
# volume; more parity than data; 10 % of many volumes.
SETS = {
    "4+2": (200_000, VOLUME, 2),
    "single+1": (30_000, VOLUME, 1),
    "2+3": (100_000, VOLUME, 3),
    "10%": (560_000, VOLUME, 0.1),
}


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("parity-keys"))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, key_pair: KeyPair) -> dict[str, ParitySet]:
    key = load_signing_key(key_pair.private, passphrase=None)
    root = tmp_path_factory.mktemp("parity-sets")
    return {
        name: parity_set(root / name.replace("%", "pct"), key, content=c, volume=v, parity=p)
        for name, (c, v, p) in SETS.items()
    }


SHAPES = {"4+2": (4, 2), "single+1": (1, 1), "2+3": (2, 3), "10%": (10, 1)}


def test_the_sets_have_the_shapes_the_tests_need(made: dict[str, ParitySet]) -> None:
    assert {n: (len(s.data_names()), len(s.parity_names())) for n, s in made.items()} == SHAPES
    four = made["4+2"]
    sizes = [len(four.originals[n]) for n in four.data_names()]
    assert sizes[:3] == [VOLUME] * 3 and sizes[3] < VOLUME
    assert json.loads(four.index_path.read_bytes())["parity"]["scheme"] == "rs-cauchy-gf256-v1"


def _patterns(k: int, m: int) -> list[tuple[str, ...]]:
    """Loss patterns up to the parity count: each volume alone, pairs, triples."""
    names = [f"set.airbundle.{i:03d}" for i in range(1, k + 1)]
    names += [f"set.airbundle.p{j:02d}" for j in range(1, m + 1)]
    patterns: list[tuple[str, ...]] = [(n,) for n in names]
    if m >= 2:
        patterns += list(itertools.combinations(names, 2))[:8]
    if m >= 3:
        patterns += [tuple(names[:3]), tuple(names[-3:])]
    return patterns


CASES = [
    (set_name, pattern, DAMAGE[i % len(DAMAGE)])
    for set_name, (k, m) in SHAPES.items()
    for i, pattern in enumerate(_patterns(k, m))
]


@pytest.mark.parametrize(("set_name", "lost", "how"), CASES)
def test_up_to_n_lost_volumes_are_rebuilt_for_verify(
    made: dict[str, ParitySet],
    key_pair: KeyPair,
    tmp_path: Path,
    set_name: str,
    lost: tuple[str, ...],
    how: str,
) -> None:
    s = made[set_name].copy(tmp_path / "set")
    for i, name in enumerate(lost):
        damage(s.path(name), DAMAGE[(DAMAGE.index(how) + i) % len(DAMAGE)])
    result = verify_bundle(s.folder, trust_policy(key_pair))
    data_lost = {n for n in lost if n in s.data_names()}
    assert set(result.rebuilt) == data_lost
    assert set(result.parity_damaged) == set(lost) - data_lost


@pytest.mark.parametrize("set_name", list(SETS))
def test_one_more_lost_volume_than_parity_is_refused_naming_them(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path, set_name: str
) -> None:
    s = made[set_name].copy(tmp_path / "set")
    m = len(s.parity_names())
    names = s.data_names() + s.parity_names()
    lost = names[:1] + names[-m:] if len(names) > m + 1 else names[: m + 1]
    for i, name in enumerate(lost):
        damage(s.path(name), DAMAGE[i % len(DAMAGE)])
    proc = run("verify", s.folder, "--trust", key_pair.public)
    assert proc.returncode == 1, proc.stderr
    assert f"{m + 1} volumes are missing or damaged" in proc.stderr
    assert "1 more needed" in proc.stderr
    assert all(n in proc.stderr for n in lost)
    assert "Traceback" not in proc.stderr


def test_verify_reports_the_rebuilt_volumes_and_exits_0(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    s = made["4+2"].copy(tmp_path / "set")
    damage(s.path("set.airbundle.002"), "delete")
    damage(s.path("set.airbundle.p01"), "flip")
    proc = run("verify", s.index_path, "--trust", key_pair.public)
    assert proc.returncode == 0, proc.stderr
    assert "volume set.airbundle.002 was missing; it was rebuilt from the set's parity" in (
        proc.stderr
    )
    assert "parity volume set.airbundle.p01 is damaged" in proc.stderr
    assert "(1 volume(s) rebuilt from parity)" in proc.stdout


def test_the_first_volume_is_rebuilt_with_its_prefix_region(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    s = made["4+2"].copy(tmp_path / "set")
    damage(s.path("set.airbundle.001"), "delete")
    damage(s.path("set.airbundle.003"), "zero")
    assert set(verify_bundle(s.folder, trust_policy(key_pair)).rebuilt) == {
        "set.airbundle.001",
        "set.airbundle.003",
    }


@pytest.mark.parametrize(
    "lost",
    [
        ("set.airbundle.001",),
        ("set.airbundle.004", "set.airbundle.p02"),
        ("set.airbundle.p01", "set.airbundle.p02"),
        ("set.airbundle.002", "set.airbundle.003"),
    ],
)
def test_repair_writes_volumes_byte_identical_to_the_originals(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path, lost: tuple[str, ...]
) -> None:
    s = made["4+2"].copy(tmp_path / "set")
    for i, name in enumerate(lost):
        damage(s.path(name), DAMAGE[i + 1])
    out = tmp_path / "out"
    proc = run("repair", s.folder, "-o", out, "--trust", key_pair.public)
    assert proc.returncode == 0, proc.stderr
    assert files_in(out) == sorted(lost)
    for name in lost:
        assert (out / name).read_bytes() == s.originals[name], name
        shutil.copy(out / name, s.path(name))
    assert files_in(s.folder) == files_in(made["4+2"].folder)
    result = verify_bundle(s.folder, trust_policy(key_pair))
    assert (result.rebuilt, result.parity_damaged) == ({}, {})


def test_repair_of_a_whole_set_writes_nothing_and_of_a_lost_one_exits_1(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    s = made["2+3"].copy(tmp_path / "set")
    policy = trust_policy(key_pair)
    assert repair_volumes(s.folder, tmp_path / "out", policy).written == {}
    assert not (tmp_path / "out").exists()
    for name in s.data_names() + s.parity_names()[:2]:
        damage(s.path(name), "delete")
    proc = run("repair", s.folder, "-o", tmp_path / "o2", "--trust", key_pair.public)
    assert proc.returncode == 1 and "4 volumes are missing or damaged" in proc.stderr
    assert "1 more needed" in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_repair_needs_trust_and_a_set_with_parity(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    other = make_key(tmp_path / "other")
    s = made["4+2"]
    proc = run("repair", s.folder, "-o", tmp_path / "o", "--trust", other.public)
    assert proc.returncode == 1 and "volume index" in proc.stderr
    plain = tmp_path / "plain"
    key = load_signing_key(key_pair.private, passphrase=None)
    single = tmp_path / "one.airbundle"
    single.write_bytes(b"".join(s.originals[n] for n in s.data_names()))
    split_bundle(single, VOLUME, (key,), folder=plain)
    with pytest.raises(UsageError, match="has no parity volumes"):
        repair_volumes(plain, tmp_path / "o", trust_policy(key_pair))


def test_co_signing_keeps_parity_valid_and_a_rebuilt_first_volume_carries_it(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    s = made["4+2"].copy(tmp_path / "set")
    reviewer = make_key(tmp_path / "reviewer")
    sign_bundle(s.index_path, load_signing_key(reviewer.private, passphrase=None))
    cosigned = s.path("set.airbundle.001").read_bytes()
    assert cosigned != s.originals["set.airbundle.001"]  # the prefix region changed
    both = trust_policy(key_pair, reviewer.public, threshold=2)
    damage(s.path("set.airbundle.001"), "delete")
    damage(s.path("set.airbundle.p01"), "truncate")
    assert set(verify_bundle(s.folder, both).rebuilt) == {"set.airbundle.001"}
    result = repair_volumes(s.folder, tmp_path / "out", both)
    assert set(result.written) == {"set.airbundle.001", "set.airbundle.p01"}
    assert (tmp_path / "out" / "set.airbundle.001").read_bytes() == cosigned
    for name in result.written:
        shutil.copy(tmp_path / "out" / name, s.path(name))
    assert verify_bundle(s.folder, both).rebuilt == {}


def test_a_parity_volume_from_another_set_is_refused_by_the_signed_index(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    key = load_signing_key(key_pair.private, passphrase=None)
    # The same content in another export (another manifest) and another
    # content: neither's parity volume is this set's.
    again = parity_set(
        tmp_path / "again", key, content=200_000, volume=VOLUME, parity=2, label="again"
    )
    other = parity_set(tmp_path / "other", key, content=200_000, volume=VOLUME, parity=2, seed=9)
    for foreign in (again, other):
        s = made["4+2"].copy(tmp_path / f"set-{foreign.folder.name}")
        shutil.copy(foreign.path("set.airbundle.p01"), s.path("set.airbundle.p01"))
        shutil.copy(foreign.path("set.airbundle.p02"), s.path("set.airbundle.p02"))
        damage(s.path("set.airbundle.003"), "delete")
        with pytest.raises(IntegrityError, match="3 volumes are missing or damaged") as err:
            verify_bundle(s.folder, trust_policy(key_pair))
        assert "set.airbundle.p01: " in str(err.value) and "set.airbundle.p02: " in str(err.value)
    # Of the same size, only the signed digest tells it apart.
    assert "set.airbundle.p01: its bytes do not match the signed index" in str(err.value)


def test_random_access_readers_rebuild_too(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    """serve --bundle and parallel readers go through the same layer."""
    s = made["10%"].copy(tmp_path / "set")
    damage(s.path("set.airbundle.006"), "flip")
    access = open_bundle_access(s.folder, trust_policy(key_pair))
    try:
        for path in access.members:
            access.verify_member(path)
            spans = access.payload_spans(path) or ()
            assert all(span.path.name != "set.airbundle.006" for span in spans)
    finally:
        access.close()


def test_rebuilt_bytes_are_the_same_with_the_portable_kernel(
    made: dict[str, ParitySet], tmp_path: Path
) -> None:
    s = made["2+3"].copy(tmp_path / "set")
    index = VolumeIndex.from_bytes(s.index_path.read_bytes(), source="t")
    damage(s.path("set.airbundle.001"), "delete")
    damage(s.path("set.airbundle.002"), "zero")
    reader = RepairingVolumes(s.folder, index, "t", kernel=PythonKernel())
    reader.survey()
    try:
        for i, name in enumerate(s.data_names()):
            size = index.volumes[i].size
            assert reader.pread(i, 0, size) == s.originals[name]
    finally:
        reader.close()
    # ...and the parity the portable kernel writes is the parity ISA-L wrote.
    fresh = made["2+3"].copy(tmp_path / "enc")
    info, temps = encode_parity(
        fresh.folder, index, [fresh.path(n) for n in fresh.data_names()], 3, kernel=PythonKernel()
    )
    assert info == index.parity
    assert [t.read_bytes() for t in temps] == [fresh.originals[n] for n in fresh.parity_names()]
    assert Layout(fresh.folder, index).m == 3


# Stripes of 12 KiB: every volume of these sets is several stripes, the last
# one short, computed two at a time on threads.
SMALL_STRIPES = dataclasses.replace(DEFAULT_LIMITS, parity_stripe_bytes=12_288, parity_workers=2)
ONE_THREAD = dataclasses.replace(SMALL_STRIPES, parity_workers=1)


def _no_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stripe read by preadv into buffers of our own (no mmap here)."""
    monkeypatch.setattr(parity, "_map", lambda fd, offset, n: None)


@pytest.mark.parametrize("set_name", ["4+2", "2+3", "single+1"])
def test_threaded_mapped_stripes_give_the_portable_kernels_bytes(
    made: dict[str, ParitySet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, set_name: str
) -> None:
    """ISA-L on mapped sources, two stripes at a time, and the portable kernel
    on copies, one stripe at a time, write the same parity, repair the same
    volumes and read the same rebuilt bytes: odd stripe counts, a short last
    volume, the first volume's prefix region."""
    library = find_isal()
    assert library is not None
    s = made[set_name]
    index = VolumeIndex.from_bytes(s.index_path.read_bytes(), source="t")
    m = len(s.parity_names())
    lost = (s.data_names()[:1] + s.data_names()[-1:] + s.parity_names())[:m]
    ways: list[tuple[str, Kernel, Limits, bool]] = [
        ("isa-l mapped", IsalKernel(library), SMALL_STRIPES, False),
        ("python copied", PythonKernel(), ONE_THREAD, True),
    ]
    mapped: list[int] = []
    real_map = parity._map

    def counted(fd: int, offset: int, n: int) -> tuple[memoryview, mmap.mmap] | None:
        mapped.append(n)
        return real_map(fd, offset, n)

    monkeypatch.setattr(parity, "_map", counted)
    for label, kernel, limits, copied in ways:
        if copied:
            assert mapped, "the ISA-L pass read no mapped stripe"
            _no_mapping(monkeypatch)
        fresh = s.copy(tmp_path / label / "enc")
        paths = [fresh.path(n) for n in fresh.data_names()]
        info, temps = encode_parity(fresh.folder, index, paths, m, kernel=kernel, limits=limits)
        assert info == index.parity, label
        assert [t.read_bytes() for t in temps] == [s.originals[n] for n in s.parity_names()]
        broken = s.copy(tmp_path / label / "set")
        for i, name in enumerate(lost):
            damage(broken.path(name), DAMAGE[i % len(DAMAGE)])
        out = tmp_path / label / "out"
        result = repair_set(broken.folder, index, "t", out, kernel=kernel, limits=limits)
        assert sorted(result.written) == sorted(lost), label
        assert all((out / n).read_bytes() == s.originals[n] for n in lost), label
        reader = RepairingVolumes(broken.folder, index, "t", kernel=kernel, limits=limits)
        reader.survey()
        try:
            for i, name in enumerate(s.data_names()):
                size = index.volumes[i].size
                # front to back in odd pieces (read-ahead), then back to front
                ahead = b"".join(
                    reader.pread(i, o, min(7_777, size - o)) for o in range(0, size, 7_777)
                )
                starts = range(max(0, size - 5_000), -1, -5_000)
                back = b"".join(
                    reversed([reader.pread(i, o, min(5_000, size - o)) for o in starts])
                )
                assert ahead == s.originals[name], (label, name)
                assert back[-size:] == s.originals[name][-len(back) :], (label, name)
        finally:
            reader.close()
        assert set(reader.rebuilt) == {n for n in lost if n in s.data_names()}, label


def test_a_source_cut_short_under_a_rebuild_is_named_and_another_used(
    made: dict[str, ParitySet], tmp_path: Path
) -> None:
    """A volume that passed the size check and is cut short before the rebuild
    reads it (a file that cannot be mapped whole) is an error of that volume,
    never a crash, and the rebuild uses another."""
    s = made["4+2"].copy(tmp_path / "set")
    index = VolumeIndex.from_bytes(s.index_path.read_bytes(), source="t")
    damage(s.path("set.airbundle.002"), "delete")
    reader = RepairingVolumes(s.folder, index, "t", limits=SMALL_STRIPES)
    assert reader.survey() == {"set.airbundle.002": "missing"}
    with s.path("set.airbundle.003").open("r+b") as fh:
        fh.truncate(30_000)
    try:
        assert reader.pread(1, 0, index.volumes[1].size) == s.originals["set.airbundle.002"]
        assert reader.pread(2, 0, 10) == s.originals["set.airbundle.003"][:10]
    finally:
        reader.close()
    assert sorted(reader.rebuilt) == ["set.airbundle.002", "set.airbundle.003"]


def test_repair_finds_a_damaged_volume_no_rebuild_reads_beside_the_rebuild(
    made: dict[str, ParitySet], key_pair: KeyPair, tmp_path: Path
) -> None:
    """One volume missing, and a parity volume the rebuild does not read
    damaged: both are written, from the same sources."""
    s = made["4+2"].copy(tmp_path / "set")
    index = VolumeIndex.from_bytes(s.index_path.read_bytes(), source="t")
    damage(s.path("set.airbundle.003"), "delete")
    damage(s.path("set.airbundle.p02"), "flip")
    out = tmp_path / "out"
    result = repair_set(s.folder, index, "t", out, limits=SMALL_STRIPES)
    assert result.written == {
        "set.airbundle.003": "missing",
        "set.airbundle.p02": "its bytes do not match the signed index",
    }
    assert result.whole == 4
    for name in result.written:
        assert (out / name).read_bytes() == s.originals[name], name


def test_a_scratch_folder_holds_rebuilt_volumes_only_while_reading(
    made: dict[str, ParitySet], tmp_path: Path
) -> None:
    s = made["4+2"].copy(tmp_path / "set")
    index = VolumeIndex.from_bytes(s.index_path.read_bytes(), source="t")
    damage(s.path("set.airbundle.002"), "delete")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reader = RepairingVolumes(s.folder, index, "t", scratch=scratch)
    reader.survey()
    assert reader.pread(1, 100, 5000) == s.originals["set.airbundle.002"][100:5100]
    assert len(files_in(scratch)) == 1
    reader.close()
    assert files_in(scratch) == []


# --- export, split and import -------------------------------------------------------


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, sample_tree: Path) -> Path:
    root = tmp_path_factory.mktemp("parity-spec")
    layer_layout(root / "layout", 150_000)
    return write_spec(
        root / "spec.yaml",
        {"ref": "oci:layout:1", "name": "example.com/big:1"},
        repos=[repo_entry("gitops", str(sample_tree / "gitops"))],
        name="p",
    )


def test_export_with_parity_percent_writes_parity_and_lists_it_in_the_signed_index(
    spec: Path, key_pair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "media" / "p.airbundle"
    out.parent.mkdir()
    proc = run(
        "export",
        spec,
        "-o",
        out,
        "--key",
        key_pair.private,
        "--split-size",
        "60000",
        "--parity",
        "10%",
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out.parent / "p.airbundle.volumes").read_bytes())
    k = len(index["volumes"])
    m = -(-k // 10)
    assert index["parity"]["parityVolumes"] == m
    assert [v["name"] for v in index["parity"]["volumes"]] == [
        f"p.airbundle.p{j:02d}" for j in range(1, m + 1)
    ]
    assert all(
        (out.parent / v["name"]).stat().st_size == v["size"] for v in index["parity"]["volumes"]
    )
    assert verify_bundle(out.parent, trust_policy(key_pair)).rebuilt == {}
    # Exported again without parity over it (--force): the old parity goes too.
    export(spec, out, key_pair, split_size=60000, force=True)
    assert not list(out.parent.glob("p.airbundle.p*"))


def test_parity_without_split_size_and_too_many_volumes_are_usage_errors(
    spec: Path, key_pair: KeyPair, tmp_path: Path
) -> None:
    proc = run(
        "export", spec, "-o", tmp_path / "x.airbundle", "--key", key_pair.private, "--parity", "1"
    )
    assert proc.returncode == 2 and "--parity needs --split-size" in proc.stderr
    key = load_signing_key(key_pair.private, passphrase=None)
    # 1.4 MB in volumes of 5200 bytes: more than 254 data volumes with 2 parity.
    with pytest.raises(UsageError, match="at most 256 volumes"):
        parity_set(tmp_path / "many", key, content=1_400_000, volume=5200, parity=2)
    assert files_in(tmp_path / "many") == []


def test_split_with_parity_from_the_cli(spec: Path, key_pair: KeyPair, tmp_path: Path) -> None:
    single = export(spec, tmp_path / "one.airbundle", key_pair, source_date_epoch=EPOCH).path
    proc = run(
        "split",
        single,
        "--size",
        "60000",
        "--key",
        key_pair.private,
        "--parity",
        "2",
        "-o",
        tmp_path / "parts",
    )
    assert proc.returncode == 0, proc.stderr
    assert {"one.airbundle.p01", "one.airbundle.p02"} <= set(files_in(tmp_path / "parts"))
    last = sorted(p.name for p in (tmp_path / "parts").glob("one.airbundle.0*"))[-1]
    assert last != "one.airbundle.001"
    damage(tmp_path / "parts" / last, "flip")
    damage(tmp_path / "parts" / "one.airbundle.p02", "delete")
    assert set(verify_bundle(tmp_path / "parts", trust_policy(key_pair)).rebuilt) == {last}


@pytest.fixture
def damaged_export(spec: Path, key_pair: KeyPair, tmp_path: Path) -> Path:
    out = tmp_path / "media" / "p.airbundle"
    export(spec, out, key_pair, split_size=60000, parity=2, source_date_epoch=EPOCH)
    data = sorted(p.name for p in out.parent.glob("p.airbundle.0*"))
    assert len(data) >= 3
    damage(out.parent / "p.airbundle.001", "delete")
    damage(out.parent / "p.airbundle.002", "flip")
    return out.parent


def _same_import(a: Path, b: Path) -> None:
    assert (a / "img" / "index.json").read_bytes() == (b / "img" / "index.json").read_bytes()
    assert files_in(a / "img/blobs/sha256") == files_in(b / "img/blobs/sha256")


@pytest.mark.integration
@pytest.mark.parametrize("scratch", [False, True])
def test_import_from_a_read_only_mount_of_a_damaged_set(
    damaged_export: Path, spec: Path, key_pair: KeyPair, tmp_path: Path, scratch: bool
) -> None:
    media = damaged_export
    before = tree_state(media)
    target = tmp_path / "target"
    argv = [
        *AIRBUNDLE,
        "import",
        str(media),
        "--trust",
        str(key_pair.public),
        "--registry",
        f"oci:{target / 'img'}",
        "--git",
        str(target / "git"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    if scratch:
        (tmp_path / "scratch").mkdir()
        argv += ["--scratch", str(tmp_path / "scratch")]
    proc = run_read_only(media, *argv)
    assert proc.returncode == 0, proc.stderr
    assert "p.airbundle.001 was missing; it was rebuilt" in proc.stderr
    assert "p.airbundle.002 was damaged" in proc.stderr
    assert tree_state(media) == before
    if scratch:
        assert files_in(tmp_path / "scratch") == []
    single = export(spec, tmp_path / "single.airbundle", key_pair, source_date_epoch=EPOCH)
    import_(
        single.path,
        key_pair,
        registry=f"oci:{tmp_path / 'b' / 'img'}",
        git=str(tmp_path / "b" / "git"),
    )
    _same_import(target, tmp_path / "b")


def test_import_from_a_folder_without_write_permission(
    damaged_export: Path, key_pair: KeyPair, tmp_path: Path
) -> None:
    media = damaged_export
    before = tree_state(media)
    media.chmod(0o555)
    try:
        report = import_(
            media,
            key_pair,
            registry=f"oci:{tmp_path / 't' / 'img'}",
            git=str(tmp_path / "t" / "git"),
            state_dir=tmp_path / "state",
        )
    finally:
        media.chmod(0o755)
    assert tree_state(media) == before
    assert any("p.airbundle.001 was missing" in n for n in report.notes)


def test_sections_read_a_damaged_set_with_parity_and_name_what_they_rebuilt(
    damaged_export: Path, key_pair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify and import read a set with parity in parallel sections (small
    bundles too, here), rebuilding in the reader the sections share."""
    from airbundle.ops import sections

    sectioned: list[int] = []
    real = sections.read_sections

    def counted(*args: Any, **kwargs: Any) -> None:
        sectioned.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(sections, "read_sections", counted)
    limits = dataclasses.replace(
        DEFAULT_LIMITS, parallel_read_min_bytes=0, read_workers=2, import_streams=3
    )
    media = damaged_export
    before = tree_state(media)
    result = verify_bundle(media, trust_policy(key_pair), limits=limits)
    assert sectioned == [1]
    assert result.rebuilt == {
        "p.airbundle.001": "missing",
        "p.airbundle.002": "its bytes do not match the signed index",
    }
    assert result.parity_damaged == {}
    report = import_(
        media,
        key_pair,
        registry=f"oci:{tmp_path / 't' / 'img'}",
        git=str(tmp_path / "t" / "git"),
        state_dir=tmp_path / "state",
        limits=limits,
    )
    assert sectioned == [1, 1]
    assert any("p.airbundle.001 was missing" in n for n in report.notes)
    assert any("p.airbundle.002 was damaged" in n for n in report.notes)
    assert tree_state(media) == before


def test_import_refuses_a_set_beyond_repair_before_writing(
    damaged_export: Path, key_pair: KeyPair, tmp_path: Path
) -> None:
    damage(damaged_export / "p.airbundle.p01", "delete")
    target = tmp_path / "t"
    with pytest.raises(IntegrityError, match="1 more needed"):
        import_(
            damaged_export,
            key_pair,
            registry=f"oci:{target / 'img'}",
            git=str(target / "git"),
            state_dir=tmp_path / "s",
        )
    assert not (target / "git").exists() or files_in(target / "git") == []


def test_scratch_must_be_a_writable_folder(
    damaged_export: Path, key_pair: KeyPair, tmp_path: Path
) -> None:
    proc = run(
        "import",
        damaged_export,
        "--trust",
        key_pair.public,
        "--registry",
        f"oci:{tmp_path / 'img'}",
        "--scratch",
        tmp_path / "nope",
    )
    assert proc.returncode == 2 and "--scratch" in proc.stderr and "no such folder" in proc.stderr
