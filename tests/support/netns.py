"""Network namespaces: run a command in a fresh user + network namespace with
only loopback, up (``unshare --user --map-root-user --net``), and prove that such a
namespace has no route out."""

from __future__ import annotations

import errno
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from support.env import clean_env, require_tool
from support.integration import starting
from support.process import ServerError

# --- network namespaces -----------------------------------------------------


def netns_argv(argv: Sequence[str]) -> list[str]:
    """argv wrapped to run in a fresh user+network namespace with only lo, up."""
    starting("a network namespace")
    unshare = require_tool("unshare")
    ip = require_tool("ip")
    script = f'{shlex.quote(ip)} link set lo up && exec "$@"'
    return [unshare, "--user", "--map-root-user", "--net", "--", "sh", "-c", script, "sh", *argv]


def netns_run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside a fresh user+network namespace (only loopback, up);
    text output captured. Raises ServerError if the namespace cannot be made."""
    proc = subprocess.run(
        netns_argv(argv),
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 and proc.stderr.startswith(("unshare:", "RTNETLINK")):
        raise ServerError(
            f"cannot create a network namespace (user namespaces disabled?):\n{proc.stderr}"
        )
    return proc


_PROBE = """\
import errno, json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
try:
    socket.create_connection((host, port), timeout=5).close()
except OSError as err:
    print(json.dumps({"connected": False, "errno": err.errno, "error": str(err),
                      "seconds": time.monotonic() - start}))
else:
    print(json.dumps({"connected": True, "seconds": time.monotonic() - start}))
"""


def assert_netns_isolated(host: str = "192.0.2.1", port: int = 80) -> str:
    """Prove a namespace from :func:`netns_run` has no route out: a TCP connect to
    ``host`` (TEST-NET-1 by default) fails at once with ENETUNREACH, before any packet
    could leave. Returns the error message; raises AssertionError otherwise."""
    proc = netns_run([sys.executable, "-c", _PROBE, host, str(port)], timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["connected"], f"connected to {host}:{port} from inside the namespace"
    assert result["errno"] == errno.ENETUNREACH, result
    assert result["seconds"] < 1.0, result
    return str(result["error"])


def netns_mount_run(argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """:func:`netns_run` plus a mount namespace of its own: containerd unpacks
    layers through bind mounts, which root in a user namespace may make there."""
    starting("a network and mount namespace")
    unshare = require_tool("unshare")
    ip = require_tool("ip")
    script = f'{ip} link set lo up && exec "$@"'
    return subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            *argv,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
