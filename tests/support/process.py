"""Child processes and the base class every test server builds on.

:class:`Process` runs a daemon in its own session (process group) with its output in
a log file; :class:`Server` is a context manager with ordered cleanups and a
start-on-a-free-port helper that retries when another process won the race for the
port. :func:`serve_in_thread` runs a standard-library HTTP server on a daemon thread."""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from support.integration import starting
from support.net import free_port

POLL = 0.05  # seconds between readiness probes


class ServerError(RuntimeError):
    """A server did not start (the message carries the tail of its log)."""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(text.splitlines()[-lines:])


def short_socket_dir(preferred: Path) -> tuple[Path, bool]:
    """A folder for a unix socket: ``preferred`` if its paths fit in sun_path, else a
    fresh short folder under the system temp dir. Returns (folder, created_here)."""
    if len(str(preferred)) <= 80:
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="ab-sock-")), True


# --- processes --------------------------------------------------------------


class Process:
    """A child in its own session (process group); stdout+stderr go to ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it."""
        pgid = self.popen.pid  # start_new_session: pgid == pid
        if self.popen.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                self.popen.wait(timeout)
        _killpg(pgid, signal.SIGKILL)  # stragglers left in the group (prefork children)
        deadline = time.monotonic() + timeout
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``probe`` every 50 ms; raise with the log tail if we exit or time out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.popen.poll()
            if code is not None:
                raise ServerError(f"{what} exited with status {code}:\n{log_tail(self.log)}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{what} not ready after {timeout:g}s:\n{log_tail(self.log)}")
            time.sleep(POLL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether a live process is left in process group ``pgid``. Zombies do not count:
    orphans are reparented to init, which may reap them late (a second or more in
    some sandboxes), and a zombie holds neither ports nor files."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_taken(log: Path) -> bool:
    text = log_tail(log, 200).lower()
    return any(
        s in text
        for s in ("address already in use", "unable to allocate any listen sockets", "eaddrinuse")
    )


class Server:
    """Context manager with an ordered list of cleanups, run once in reverse order.

    Subclasses start their server in ``__init__`` after calling this one, and
    register how to stop it with ``_on_stop``; ``stop()`` is idempotent.
    """

    def __init__(self) -> None:
        starting(type(self).__name__)
        self._cleanups: list[Callable[[], None]] = []
        self._stopped = False

    def _on_stop(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        errors: list[BaseException] = []
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as err:  # keep cleaning up; report the first failure
                errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_process(
        self,
        make_argv: Callable[[int], Sequence[str]],
        log: Path,
        probe: Callable[[int], bool],
        what: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        attempts: int = 3,
    ) -> tuple[Process, int]:
        """Start on a free port; retry on a new port if another process won the race."""
        for attempt in range(attempts):
            port = free_port()
            proc = Process(make_argv(port), log, env=env, cwd=cwd)
            try:
                proc.wait_ready(functools.partial(probe, port), timeout, what)
            except ServerError:
                proc.stop()
                if attempt + 1 < attempts and _port_taken(log):
                    continue
                raise
            self._on_stop(proc.stop)
            return proc, port
        raise AssertionError("unreachable")


class ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_in_thread(httpd: http.server.HTTPServer, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": POLL}, name=name, daemon=True
    )
    thread.start()
    return thread
