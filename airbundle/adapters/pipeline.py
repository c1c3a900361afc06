"""Overlap producing bytes with sending them.

zstd decompression, sha256 and socket writes all release the GIL, so a
reader thread that decompresses (and checks) the next chunks while the
caller uploads the current ones keeps both cores busy. Memory stays bounded
by the queue depth.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from airbundle.limits import DEFAULT_LIMITS

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def prefetch(
    chunks: Iterable[bytes], *, depth: int = DEFAULT_LIMITS.prefetch_chunks
) -> Generator[bytes, None, None]:
    """Iterate `chunks` in a background thread, `depth` chunks ahead.

    Exceptions raised by `chunks` (a digest mismatch at its end, for one)
    are re-raised here. When the caller stops early, the thread is stopped
    and joined before this generator returns, so `chunks` can be drained by
    someone else afterwards.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)

    thread = threading.Thread(target=produce, name="airbundle-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes | bytearray | memoryview)
            yield bytes(item)
    finally:
        stop.set()
        thread.join()
        # Stopped early: if the source had failed (a digest mismatch at its
        # end), say so now rather than let the caller drain a spent iterator.
        while not q.empty():
            item = q.get_nowait()
            if isinstance(item, BaseException):
                raise item


def ahead(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    window: int = DEFAULT_LIMITS.small_blob_window,
    workers: int = DEFAULT_LIMITS.small_blob_workers,
) -> Generator[R, None, None]:
    """`func` over `items` in a bounded pool, yielded in order, at most
    `window` running or done ahead of the caller. A failure is raised when
    its turn comes; when the caller stops early, what has not started is
    cancelled and the rest is awaited."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="airbundle-ahead")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parallel(
    func: Callable[[T], R], items: Sequence[T], *, workers: int = DEFAULT_LIMITS.import_workers
) -> list[R]:
    """`func` over `items` in a bounded pool, results in order, first error raised."""
    if len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(func, items))
