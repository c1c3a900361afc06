"""podman as a client, with storage, run folders and configuration of its own
(nothing shared with the host's)."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from support.env import clean_env, require_tool


def podman(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """podman with its own storage (vfs) and run folders: nothing shared with the host."""
    binary = require_tool("podman")
    root.mkdir(parents=True, exist_ok=True)
    # podman refuses a run root longer than 50 characters.
    runroot = Path(tempfile.gettempdir()) / f"pm-{hashlib.sha256(bytes(root)).hexdigest()[:12]}"
    conf = root / "containers.conf"
    conf.write_text('[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n')
    return subprocess.run(
        [
            binary,
            "--root",
            str(root / "storage"),
            "--runroot",
            str(runroot),
            "--storage-driver",
            "vfs",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(
            {
                "CONTAINERS_CONF": str(conf),
                "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
                "XDG_RUNTIME_DIR": str(root / "xdg"),
                "HOME": str(root),
            }
        ),
        check=False,
    )
