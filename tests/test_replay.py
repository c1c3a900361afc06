"""The replay window of a streamed upload: what can be resent after a failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.adapters.registry.replay import ReplayWindow, SourceFailure

chunk_lists = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30)


def take(body: Iterator[bytes], limit: int) -> bytes:
    """Pull from a request body until at least `limit` bytes came (a cut request)."""
    out = b""
    for chunk in body:
        out += chunk
        if len(out) >= limit:
            break
    return out


@given(chunks=chunk_lists, keep=st.integers(1, 100), cut=st.integers(0, 1200), data=st.data())
def test_a_resend_from_any_held_offset_yields_exactly_the_rest_of_the_blob(
    chunks: list[bytes], keep: int, cut: int, data: st.DataObject
) -> None:
    blob = b"".join(chunks)
    window = ReplayWindow(chunks, len(blob), keep)
    sent = take(window.body(0), cut)

    assert sent == blob[: len(sent)]
    assert window.read == len(sent)
    # Everything is held while fewer than `keep` bytes were read, and always at
    # least the last `keep` (when that many were read).
    assert window.start == 0 or window.read - window.start >= keep
    offset = data.draw(st.integers(window.start, window.read))
    assert b"".join(window.body(offset)) == blob[offset:]


def test_offsets_outside_the_window_cannot_be_resent() -> None:
    window = ReplayWindow([b"a" * 10] * 5, 50, keep=15)
    take(window.body(0), 50)

    assert (window.start, window.read) == (30, 50)
    assert not window.can_resend_from(29)
    assert not window.can_resend_from(51)
    with pytest.raises(ValueError, match="outside the held bytes"):
        next(window.body(0))


def test_the_source_is_read_to_its_end_so_a_digest_check_there_runs() -> None:
    def source() -> Iterator[bytes]:
        yield b"abc"
        raise RuntimeError("digest mismatch")  # what a verifying stream does at its end

    window = ReplayWindow(source(), 3, keep=8)
    with pytest.raises(SourceFailure) as caught:
        b"".join(window.body(0))
    assert isinstance(caught.value.failure, RuntimeError)  # not an OSError urllib3 would eat
    assert not isinstance(caught.value, OSError)


@pytest.mark.parametrize(
    ("chunks", "size", "message"),
    [
        ([b"abc", b"de"], 4, "more than the expected 4 bytes"),
        ([b"abc"], 4, "got 3 bytes, expected 4"),
    ],
)
def test_a_source_of_the_wrong_size_is_refused(
    chunks: list[bytes], size: int, message: str
) -> None:
    with pytest.raises(SourceFailure, match=message) as caught:
        b"".join(ReplayWindow(chunks, size, keep=8).body(0))
    assert isinstance(caught.value.failure, ValueError)
