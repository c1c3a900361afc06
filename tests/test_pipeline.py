"""The small concurrency helpers: order kept, memory bounded, failures in their turn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.adapters.pipeline import ahead, prefetch

PRODUCER = "airbundle-prefetch"  # the name of prefetch's thread


@given(st.lists(st.integers(), max_size=60), st.integers(1, 8))
def test_ahead_yields_every_result_in_order(items: list[int], window: int) -> None:
    assert list(ahead(lambda x: x * 2, items, window=window)) == [x * 2 for x in items]


def test_ahead_keeps_at_most_window_items_in_flight() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return x

    results = ahead(work, range(40), window=3, workers=8)
    for _ in results:
        time.sleep(0.005)  # a slow consumer
    assert peak <= 3


def test_ahead_raises_a_failure_in_its_turn_and_stops_the_rest() -> None:
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        if x == 2:
            raise ValueError("item 2 is bad")
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="item 2 is bad"):
        for value in ahead(work, range(100), window=4, workers=2):
            got.append(value)
    assert got == [0, 1]
    assert max(started) < 2 + 4 + 1  # nothing far beyond the window was started


def test_prefetch_raises_a_queued_failure_when_the_consumer_stops_early() -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("digest mismatch at the end")

    it = prefetch(source())
    before = set(threading.enumerate())
    assert next(it) == b"a"
    # The producer thread ends once it has queued the failure: wait for that (it may
    # have ended already).
    for producer in [t for t in threading.enumerate() if t not in before and t.name == PRODUCER]:
        producer.join(timeout=10)
        assert not producer.is_alive()
    with pytest.raises(ValueError, match="digest mismatch"):
        it.close()
