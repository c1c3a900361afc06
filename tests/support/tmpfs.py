"""A small tmpfs inside a user + mount namespace, to run commands on a full disk.

:func:`on_small_tmpfs` mounts a 200 KiB tmpfs inside ``unshare --user
--map-root-user --mount`` and runs a list of steps there through a small driver
script (:mod:`support.tmpfs_driver`): each step may place a file and run a command;
its result carries the exit status, the output and every file left on the tmpfs
with its sha256 (the tmpfs dies with the namespace, so it is judged from inside).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.env import require_tool
from support.integration import starting

DRIVER = Path(__file__).with_name("tmpfs_driver.py")


def on_small_tmpfs(root: Path, steps: list[dict[str, Any]], env: dict[str, str]) -> list[Any]:
    """Mount a 200 KiB tmpfs on ``root`` inside a user+mount namespace and run ``steps``
    there (each: optional "place": [src, dest], optional "argv"); every step's result
    carries the files under ``root`` with their sha256 (the tmpfs dies with the
    namespace, so it is judged from inside)."""
    starting("a mount namespace")
    unshare = require_tool("unshare")
    root.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size=200k tmpfs "$1" || exit 97; shift; exec "$@"'
    argv = [unshare, "--user", "--map-root-user", "--mount", "--", "sh", "-c", script, "sh",
            str(root), sys.executable, str(DRIVER), str(root), json.dumps(steps)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    if proc.returncode == 97 or proc.stderr.startswith("unshare:"):
        pytest.fail(
            "cannot mount a tmpfs inside a user namespace on this machine (needed for the "
            f"disk-full tests; check kernel.unprivileged_userns_clone):\n{proc.stderr}",
            pytrace=False,
        )
    assert proc.returncode == 0, proc.stderr
    results: list[Any] = json.loads(proc.stdout)
    return results
