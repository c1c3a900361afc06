"""Headless Chromium from Debian as a judge of web pages (``--dump-dom``), with a
fresh profile each time."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.env import clean_env, require_tool

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(url: str, profile: Path, *extra: str, timeout: float = 90) -> str:
    """Headless Chromium from Debian loading `url` with a fresh profile; its stdout."""
    binary = require_tool("chromium")
    proc = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env({"HOME": str(profile)}),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
