"""pkt-line framing and the receive-pack exchange, judged against git's own bytes."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.adapters.git_push import check_report
from airbundle.errors import TargetError
from airbundle.format import pktline
from support.env import require_tool


@given(st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=300)), max_size=20))
def test_encode_then_decode_gives_back_every_payload_and_flush(
    items: list[bytes | None],
) -> None:
    data = b"".join(pktline.FLUSH if i is None else pktline.encode(i) for i in items)
    assert list(pktline.decode(data)) == items


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_to_slices_of_the_input_or_a_pktline_error(data: bytes) -> None:
    out: list[bytes | None] = []
    with contextlib.suppress(pktline.PktLineError):  # nothing else may escape
        out.extend(pktline.decode(data))
    assert all(item is None or item in data for item in out)
    assert sum(4 + len(item or b"") for item in out) <= len(data)


def test_a_payload_over_the_protocol_limit_is_refused() -> None:
    with pytest.raises(pktline.PktLineError, match="too long"):
        pktline.encode(b"x" * (pktline.MAX_PAYLOAD + 1))


def git(*args: str | Path) -> bytes:
    return subprocess.run(
        [require_tool("git"), *map(str, args)], check=True, capture_output=True
    ).stdout


def test_the_advertisement_git_receive_pack_sends_is_read(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    git("init", "--quiet", "--bare", "-b", "main", repo)
    empty = pktline.parse_advertisement(git("receive-pack", "--advertise-refs", repo))
    assert empty.refs == {}
    assert {"report-status", "atomic", "ofs-delta", "side-band-64k"} <= empty.capabilities

    work = tmp_path / "w"
    git("init", "--quiet", "-b", "main", work)
    git("-C", work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
        "--allow-empty", "-m", "one")  # fmt: skip
    git("-C", work, "tag", "v1")
    git("-C", work, "push", "-q", repo, "main", "v1")
    head = git("-C", work, "rev-parse", "HEAD").decode().strip()
    full = pktline.parse_advertisement(git("receive-pack", "--advertise-refs", repo))
    assert full.refs == {"refs/heads/main": head, "refs/tags/v1": head}


def test_smart_http_preamble_is_skipped() -> None:
    data = (
        pktline.encode(b"# service=git-receive-pack\n")
        + pktline.FLUSH
        + pktline.encode(b"%s refs/heads/main\0report-status atomic\n" % (b"a" * 40))
        + pktline.FLUSH
    )
    adv = pktline.parse_advertisement(data)
    assert adv.refs == {"refs/heads/main": "a" * 40}
    assert adv.capabilities == {"report-status", "atomic"}


def test_no_capabilities_is_an_error() -> None:
    with pytest.raises(pktline.PktLineError, match="no receive-pack capabilities"):
        pktline.parse_advertisement(pktline.FLUSH)


def test_commands_carry_capabilities_on_the_first_line_only() -> None:
    data = pktline.commands(
        [(pktline.ZERO_OID, "b" * 40, "refs/heads/main"), ("c" * 40, "d" * 40, "refs/tags/v")],
        ["report-status", "atomic"],
    )
    payloads = list(pktline.decode(data))
    assert payloads == [
        f"{pktline.ZERO_OID} {'b' * 40} refs/heads/main\0report-status atomic\n".encode(),
        f"{'c' * 40} {'d' * 40} refs/tags/v\n".encode(),
        None,
    ]


def sideband(band: int, inner: bytes) -> bytes:
    return pktline.encode(bytes([band]) + inner)


def test_a_report_is_read_plain_and_through_side_band() -> None:
    inner = (
        pktline.encode(b"unpack ok\n")
        + pktline.encode(b"ok refs/heads/main\n")
        + pktline.encode(b"ng refs/tags/v1 pre-receive hook declined\n")
        + pktline.FLUSH
    )
    want = pktline.Report(
        "ok", {"refs/heads/main": "ok", "refs/tags/v1": "pre-receive hook declined"}
    )
    assert pktline.parse_report(inner, sideband=False) == want
    muxed = sideband(2, b"remote: progress\n") + sideband(1, inner) + pktline.FLUSH
    assert pktline.parse_report(muxed, sideband=True) == want
    fatal = sideband(3, b"fatal: out of disk\n") + pktline.FLUSH
    assert pktline.parse_report(fatal, sideband=True).errors == ("fatal: out of disk",)


def test_a_report_cut_before_its_flush_is_incomplete() -> None:
    inner = pktline.encode(b"unpack ok\n")  # no ref lines, no flush: the server went away
    assert not pktline.parse_report(sideband(1, inner), sideband=True).complete
    assert not pktline.parse_report(inner, sideband=False).complete


def test_a_push_counts_only_if_the_pack_and_every_ref_are_reported_ok() -> None:
    ok = pktline.Report("ok", {"refs/heads/main": "ok"})
    check_report(ok, ["refs/heads/main"], "push")
    with pytest.raises(TargetError, match="refs/tags/v1: not reported"):
        check_report(ok, ["refs/heads/main", "refs/tags/v1"], "push")
    cut = pktline.Report("ok", {"refs/heads/main": "ok"}, complete=False)
    with pytest.raises(TargetError, match="ended early"):
        check_report(cut, ["refs/heads/main"], "push")
    with pytest.raises(TargetError, match="refused the pack: index-pack failed"):
        check_report(pktline.Report("index-pack failed", {}), ["refs/heads/main"], "push")
