"""Run a user's command (a scanner, export --vet-command) as an argument list,
with its output capped and a deadline.

Each command runs in a session of its own, so that it and everything it
started are killed together: at the deadline, once it exits (nothing it left
running may hold its output open), and when the caller gives up (Ctrl-C).
Its process-group id stays reserved until then: the exited leader is only
reaped after its group was killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from airbundle.errors import UsageError

_POLL = 0.05
# After the command's group is gone, how long its output may take to drain.
_DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None: killed at the deadline
    timed_out: bool
    stdout: bytes  # the first bytes, up to the cap
    stdout_bytes: int  # everything it wrote
    stderr_tail: bytes  # the last bytes, up to the cap


class _Capped(threading.Thread):
    """Reads a pipe to its end, keeping the head (or the tail) up to `cap`."""

    def __init__(self, pipe: IO[bytes], cap: int, *, tail: bool) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap, self.tail = pipe, cap, tail
        self.kept = bytearray()
        self.total = 0

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.pipe.read1(1 << 16):  # type: ignore[attr-defined]
                self.total += len(chunk)
                if self.tail:
                    self.kept += chunk
                    del self.kept[: max(0, len(self.kept) - self.cap)]
                elif len(self.kept) < self.cap:
                    self.kept += chunk[: self.cap - len(self.kept)]


class CommandRunner:
    """Runs commands; `kill_all` ends every one still running (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[int] = set()

    def run(
        self, argv: Sequence[str], *, timeout: float, max_stdout: int, max_stderr: int
    ) -> CommandResult:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise UsageError(
                f"cannot run {argv[0]!r}: {exc.strerror or exc}",
                hint="give the command as it would be typed; write `sh -c '...'` for a shell",
            ) from None
        assert proc.stdout is not None and proc.stderr is not None
        out = _Capped(proc.stdout, max_stdout, tail=False)
        err = _Capped(proc.stderr, max_stderr, tail=True)
        out.start()
        err.start()
        with self._lock:
            self._live.add(proc.pid)
        try:
            timed_out = not self._exited(proc.pid, time.monotonic() + timeout)
        finally:
            self._kill(proc.pid)
            code = proc.wait()
            with self._lock:
                self._live.discard(proc.pid)
        for reader in (out, err):
            reader.join(_DRAIN_SECONDS)
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
        return CommandResult(
            None if timed_out else code, timed_out, bytes(out.kept), out.total, bytes(err.kept)
        )

    def kill_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for pid in live:
            self._kill(pid)

    @staticmethod
    def _exited(pid: int, deadline: float) -> bool:
        """Wait for the leader to exit without reaping it (its pid, and so its
        process-group id, stays taken until the group has been killed)."""
        flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, flags) is not None:
                return True
            time.sleep(_POLL)
        return os.waitid(os.P_PID, pid, flags) is not None

    @staticmethod
    def _kill(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
