"""The erasure code of parity volumes and the parity section of the volume
index, judged by an independent implementation (support/parity.py)."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.adapters.gfkernel import IsalKernel, PythonKernel, find_isal, load_kernel
from airbundle.errors import ManifestError, UsageError
from airbundle.format import erasure
from airbundle.format.digest import Digest
from airbundle.format.volumes import (
    ParityInfo,
    VolumeEntry,
    VolumeIndex,
    parity_count,
    parse_parity,
)
from support.parity import judge_cauchy, judge_encode, judge_generator, judge_mul, judge_rank


def test_field_multiply_agrees_with_the_judge_on_every_pair() -> None:
    assert all(erasure.mul(a, b) == judge_mul(a, b) for a in range(256) for b in range(256))


@given(st.integers(1, 40), st.integers(1, 40))
def test_parity_matrix_is_the_documented_cauchy_matrix(k: int, m: int) -> None:
    assert erasure.parity_matrix(k, m) == judge_cauchy(k, m)


def test_first_parity_row_and_column_are_ones_and_the_matrix_ignores_k_and_m() -> None:
    big = erasure.parity_matrix(200, 56)
    assert big[0] == [1] * 200 and [row[0] for row in big] == [1] * 56
    assert erasure.parity_matrix(7, 3) == [row[:7] for row in big[:3]]


@given(st.data())
def test_any_m_erasures_leave_a_generator_the_judge_finds_invertible(data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 60), label="k")
    m = data.draw(st.integers(1, min(12, 256 - k)), label="m")
    lost = data.draw(
        st.lists(st.integers(0, k + m - 1), min_size=1, max_size=m, unique=True), label="lost"
    )
    generator = judge_generator(k, m)
    survivors = [generator[s] for s in range(k + m) if s not in lost]
    assert judge_rank(survivors[:k]) == k


@pytest.mark.parametrize(("k", "m"), [(10, 3), (4, 4), (2, 5), (1, 6), (12, 2)])
def test_every_loss_pattern_of_small_sets_is_recoverable(k: int, m: int) -> None:
    generator = judge_generator(k, m)
    for lost in itertools.combinations(range(k + m), m):
        kept = [generator[s] for s in range(k + m) if s not in lost]
        assert judge_rank(kept) == k, lost


def test_the_largest_sets_the_code_allows_are_recoverable() -> None:
    rng = random.Random(7)  # noqa: S311 (test data)
    for k, m in [(255, 1), (200, 56), (128, 128)]:
        generator = judge_generator(k, m)
        for _ in range(3):
            lost = set(rng.sample(range(k + m), m))
            kept = [generator[s] for s in range(k + m) if s not in lost]
            assert judge_rank(kept) == k
    with pytest.raises(ValueError):
        erasure.parity_matrix(200, 57)


@given(st.data())
def test_rebuilt_shards_equal_the_lost_ones(data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 8), label="k")
    m = data.draw(st.integers(1, 6), label="m")
    n = data.draw(st.integers(1, 40), label="n")
    shards = [data.draw(st.binary(min_size=n, max_size=n)) for _ in range(k)]
    parity = judge_encode(k, m, shards)
    assert [erasure.combine(row, shards, n) for row in erasure.parity_matrix(k, m)] == parity
    every = shards + parity
    lost = data.draw(st.lists(st.integers(0, k + m - 1), max_size=m, unique=True), label="lost")
    sources = [s for s in range(k + m) if s not in lost][:k]
    matrix = erasure.rebuild_matrix(k, m, sources, lost)
    for shard, row in zip(lost, matrix, strict=True):
        assert erasure.combine(row, [every[s] for s in sources], n) == every[shard]


def test_isa_l_is_installed_for_the_fast_kernel() -> None:
    assert find_isal() is not None, "libisal.so.2 missing: apt-get install libisal2"
    assert load_kernel().name == "isa-l"


@given(st.data())
def test_isa_l_and_the_portable_kernel_give_identical_bytes(data: st.DataObject) -> None:
    library = find_isal()
    assert library is not None
    rows = data.draw(st.integers(1, 6), label="rows")
    k = data.draw(st.integers(1, 12), label="k")
    n = data.draw(st.sampled_from([1, 15, 31, 32, 33, 64, 100, 4096, 65_537]), label="n")
    matrix = [[data.draw(st.integers(0, 255)) for _ in range(k)] for _ in range(rows)]
    rng = random.Random(data.draw(st.integers(0, 2**32)))  # noqa: S311 (test data)
    sources = [bytearray(rng.randbytes(n)) for _ in range(k)]
    results = []
    for kernel in (IsalKernel(library), PythonKernel()):
        outs = [bytearray(n) for _ in range(rows)]
        kernel.apply(kernel.prepare(matrix), sources, outs, n)
        results.append(outs)
    assert results[0] == results[1]


def test_the_portable_kernel_is_chosen_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRBUNDLE_ERASURE_KERNEL", "python")
    assert load_kernel().name == "python"


# --- --parity ------------------------------------------------------------------------


def test_parity_option_counts_volumes_or_rounds_a_percentage_up() -> None:
    assert parse_parity("2") == 2
    assert parity_count(parse_parity("10%"), 10) == 1
    assert parity_count(parse_parity("10%"), 11) == 2
    assert parity_count(parse_parity("10%"), 1) == 1
    assert parity_count(parse_parity("150%"), 2) == 3
    for bad in ("0", "-1", "100", "x", "0%", "%", "1.5"):
        with pytest.raises(UsageError, match="invalid --parity"):
            parse_parity(bad)


# --- the parity section of the volume index --------------------------------------------

D = Digest("sha256", "ab" * 32)


def _index(k: int = 3, m: int = 2, last: int = 500) -> VolumeIndex:
    volumes = tuple(
        VolumeEntry(f"b.airbundle.{i:03d}", 1000 if i < k else last, 100 if i == 1 else 0, D)
        for i in range(1, k + 1)
    )
    parity = ParityInfo(
        erasure.SCHEME,
        1000,
        tuple(VolumeEntry(f"b.airbundle.p{j:02d}", 1100, 100, D) for j in range(1, m + 1)),
    )
    return VolumeIndex("b.airbundle", sum(v.size for v in volumes), volumes, parity)


def test_index_with_parity_round_trips_and_one_without_is_unchanged() -> None:
    index = _index()
    assert VolumeIndex.from_bytes(index.to_bytes(), source="t") == index
    plain = VolumeIndex(index.bundle, index.total_length, index.volumes)
    assert "parity" not in json.loads(plain.to_bytes())
    assert VolumeIndex.from_bytes(plain.to_bytes(), source="t").parity is None


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_index().to_bytes())
    return doc


BROKEN: list[tuple[str, Any, str]] = [
    ("scheme", "rs-vandermonde", "parity.scheme"),
    ("dataVolumes", 2, "parity.dataVolumes"),
    ("dataVolumes", True, "parity.dataVolumes"),
    ("parityVolumes", 0, "parity.parityVolumes"),
    ("parityVolumes", 100, "parity.parityVolumes"),
    ("parityVolumes", "2", "parity.parityVolumes"),
    ("shardSize", 999, "parity.shardSize"),
    ("shardSize", -1, "parity.shardSize"),
    ("volumes", [], "parity.volumes"),
    ("extra", 1, "parity: Additional properties are not allowed ('extra'"),
]


@pytest.mark.parametrize(("field", "value", "named"), BROKEN)
def test_a_bad_parity_field_is_refused_by_name(field: str, value: Any, named: str) -> None:
    doc = _doc()
    doc["parity"][field] = value
    with pytest.raises(ManifestError, match=re.escape(named)):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")


ENTRY_BROKEN: list[tuple[str, Any, str]] = [
    ("name", "b.airbundle.p07", "name"),
    ("name", "../x", "name"),
    ("size", 1099, "must cover"),
    ("coveredFrom", 0, "must cover"),
    ("digest", "sha256:zz", "digest"),
    ("digest", 5, "digest"),
    ("more", 1, "'more' was unexpected"),
]


@pytest.mark.parametrize(("field", "value", "named"), ENTRY_BROKEN)
def test_a_bad_parity_volume_entry_is_refused_by_name(field: str, value: Any, named: str) -> None:
    doc = _doc()
    doc["parity"]["volumes"][1][field] = value
    with pytest.raises(ManifestError, match=r"parity\.volumes\[1\]"):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")
    with pytest.raises(ManifestError, match=named):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(st.sampled_from(["scheme", "dataVolumes", "parityVolumes", "shardSize", "volumes"]), JSON)
def test_any_value_in_a_parity_field_parses_or_is_refused_cleanly(field: str, value: Any) -> None:
    doc = _doc()
    doc["parity"][field] = value
    try:
        index = VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")
    except ManifestError:
        return
    assert index.parity is not None and index.parity.count == 2


@given(JSON)
def test_any_parity_section_parses_or_is_refused_cleanly(value: Any) -> None:
    doc = _doc()
    doc["parity"] = value
    with pytest.raises(ManifestError):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")


@given(st.binary(max_size=300))
def test_random_bytes_in_a_parity_volume_entry_never_crash_the_parser(raw: bytes) -> None:
    doc = _doc()
    doc["parity"]["volumes"][0]["digest"] = raw.decode("latin-1")
    doc["parity"]["volumes"][0]["name"] = os.fsdecode(raw[:40]) if raw else ""
    with pytest.raises(ManifestError):
        VolumeIndex.from_bytes(json.dumps(doc).encode(), source="t")
