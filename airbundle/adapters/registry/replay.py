"""The bytes of a streamed upload, with the most recent ones kept for a resend.

A large blob goes up in one PATCH whose body is read once from the bundle. If
the request fails, the registry may have kept some of it; we can resend from
the offset it acknowledges only while we still hold the bytes from there on.
This window holds the last `keep` bytes (and everything while fewer than
`keep` were read), so a failure near the start can always restart from zero.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator


class SourceFailure(Exception):  # noqa: N818 (carries the source's own error)
    """The blob's source failed while a request body was being sent.

    Deliberately not an OSError: urllib3 takes those for a broken connection
    (and may swallow EPIPE), but a read error on the bundle's media or a digest
    mismatch must end the upload, not resume it. The cause is `failure`."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.failure = failure


class ReplayWindow:
    def __init__(self, source: Iterable[bytes], size: int, keep: int) -> None:
        self._source = iter(source)
        self.size = size
        self._keep = keep
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self.start = 0  # offset of the first byte still held
        self.read = 0  # bytes taken from the source so far
        self._ended = False

    def can_resend_from(self, offset: int) -> bool:
        return self.start <= offset <= self.read

    def body(self, offset: int) -> Iterator[bytes]:
        """The blob's bytes from `offset` to its end, for one request body.

        Reads the source to its end (one step past the last byte), so a source
        that checks a digest at its end raises inside the request, before the
        upload can be finished. Whatever the source raises, and a ValueError if
        it holds more or fewer than `size` bytes, comes as a SourceFailure.
        """
        if not self.can_resend_from(offset):
            raise ValueError(f"offset {offset} is outside the held bytes {self.start}-{self.read}")
        position = self.start
        for chunk in list(self._held):
            end = position + len(chunk)
            if end > offset:
                yield chunk[max(0, offset - position) :]
            position = end
        while not self._ended:
            try:
                fresh = next(self._source, None)
            except Exception as exc:
                raise SourceFailure(exc) from exc
            if fresh is None:
                self._ended = True
                if self.read != self.size:
                    raise SourceFailure(ValueError(f"got {self.read} bytes, expected {self.size}"))
                return
            if not fresh:
                continue
            self.read += len(fresh)
            if self.read > self.size:
                raise SourceFailure(ValueError(f"got more than the expected {self.size} bytes"))
            self._hold(fresh)
            yield fresh

    def _hold(self, chunk: bytes) -> None:
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        while self._held_bytes - len(self._held[0]) >= self._keep:
            dropped = self._held.popleft()
            self._held_bytes -= len(dropped)
            self.start += len(dropped)
