"""SIGKILL of the CLI at a chosen moment of its conversation with a
:class:`~support.fault_proxy.FaultProxy`: some time after its first request, or
once a request held by a Stall rule has arrived."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.env import AIRBUNDLE, clean_env
from support.fault_proxy import FaultProxy, Rule, Stall


def airbundle_argv(*args: str | Path) -> list[str]:
    """The checkout's CLI with these arguments."""
    return [*AIRBUNDLE, *map(str, args)]


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no proxies in its environment), its output into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env()
        )


@dataclass(frozen=True)
class Hold:
    """A kill point: hold the first request matching (method, path) with a Stall
    (optionally after ``after`` response body bytes) and kill once it has arrived."""

    method: str
    path: str
    after: int | None = None


def armed(proxy: FaultProxy, point: float | Hold) -> float | Rule:
    """The kill point as :func:`kill_at` takes it: a Hold becomes its Stall rule."""
    if isinstance(point, Hold):
        return proxy.add(point.method, point.path, Stall(30.0, after=point.after))
    return point


def kill_at(
    proc: subprocess.Popen[bytes], log: Path, proxy: FaultProxy, point: float | Rule
) -> None:
    """SIGKILL ``proc`` ``point`` seconds after the proxy saw its first request, or
    0.3 s after the request held by the Stall rule ``point`` reached the proxy."""

    def output() -> str:
        return log.read_text(errors="replace")[-2000:]

    deadline = time.monotonic() + 30
    while True:
        arrived = proxy.arrivals
        if isinstance(point, float) and arrived:
            time.sleep(max(0.0, arrived[0][2] + point - time.monotonic()))
            break
        if isinstance(point, Rule) and point.fired:
            time.sleep(0.3)  # let it write what it got into its files
            break
        assert proc.poll() is None, f"exit {proc.returncode} before the kill point:\n{output()}"
        assert time.monotonic() < deadline, f"the kill point never came:\n{output()}"
        time.sleep(0.005)
    assert proc.poll() is None, f"exit {proc.returncode} before the kill at {point}:\n{output()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
