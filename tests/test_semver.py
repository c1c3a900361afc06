"""Semantic versions and Helm's version constraints: the ranges a chart spec's
`version:` may use pick what Helm would pick."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.errors import FormatError
from airbundle.format.semver import Constraint, Version, is_exact, pick

INDEX = [
    "0.2.3",
    "0.2.9",
    "0.3.0",
    "1.0.0",
    "1.2.3",
    "1.2.4",
    "1.3.0",
    "2.0.0",
    "2.1.0-rc.1",
    "6.5.4",
    "6.5.10",
    "6.6.0",
]


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        ("6.5.4", "6.5.4"),  # exact, listed
        ("^1.2", "1.3.0"),
        ("~1.2.3", "1.2.4"),
        ("~1", "1.3.0"),
        (">=1.0 <2.0", "1.3.0"),
        (">=1.0, <2.0", "1.3.0"),
        ("1.2.x", "1.2.4"),
        ("1.2", "1.2.4"),  # a partial version is a range
        ("1.0 - 1.2", "1.2.4"),  # hyphen range, upper partial: all of 1.2.x
        ("*", "6.6.0"),  # the newest release, not the release candidate
        ("^0.2.3", "0.2.9"),
        ("^0.0.3", None),
        ("6.5.x", "6.5.10"),  # numeric, not text, order
        ("<1.3 || >=2 <3", "2.0.0"),
        ("2.1.0-rc.1", "2.1.0-rc.1"),
        (">=2.1.0-rc.0", "6.6.0"),
        (">=2.1.0-rc.0 <2.2.0-0", "2.1.0-rc.1"),  # a pre-release only when every term names one
        (">1.2", "6.6.0"),
        ("<=1.2", "1.2.4"),
        ("!=1.2.4 1.2.x", "1.2.3"),
        ("7.x", None),
    ],
)
def test_a_version_range_picks_what_helm_picks(wanted: str, chosen: str | None) -> None:
    assert pick(INDEX, wanted) == chosen


def test_an_exact_version_not_in_semver_form_is_picked_by_its_text() -> None:
    assert pick(["latest-build", "1.0.0"], "latest-build") == "latest-build"


@pytest.mark.parametrize("text", ["", "abc", "1.2.3.4", ">>1", "1..2", "^", "1.2 -", "a || b"])
def test_a_malformed_constraint_is_refused(text: str) -> None:
    with pytest.raises(FormatError):
        Constraint.parse(text)


def test_pre_releases_sort_before_their_release() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-rc.1"]
    versions = [Version.parse(v) for v in [*ordered, "1.0.0"]]
    assert sorted(reversed(versions)) == versions


def test_exact_versions_are_told_from_ranges() -> None:
    assert is_exact("6.5.4") and is_exact("v1.2.3-rc.1+b5")
    assert not any(is_exact(t) for t in ("6.5", "^6.5.4", "6.x", ">=1"))


versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}" if pre else ""),
    st.integers(0, 30),
    st.integers(0, 30),
    st.integers(0, 30),
    st.sampled_from(["", "rc.1", "alpha", "beta.2"]),
)


@given(
    st.lists(versions, min_size=1, max_size=20),
    st.sampled_from(["*", "^1", "~2.3", ">=3 <20", "1.x"]),
)
def test_the_pick_is_the_highest_allowed_version(listed: list[str], wanted: str) -> None:
    chosen = pick(listed, wanted)
    constraint = Constraint.parse(wanted)
    allowed = [Version.parse(v) for v in listed if constraint.allows(Version.parse(v))]
    if chosen is None:
        assert not allowed
    else:
        assert Version.parse(chosen) == max(allowed)


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(FormatError):
        Constraint.parse(text)
    with contextlib.suppress(FormatError):
        Version.parse(text)
