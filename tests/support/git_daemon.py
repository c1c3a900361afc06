"""``git daemon`` on loopback (push enabled), and the bare-repository helper every
git server fixture shares."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from support.env import clean_env, git_env, require_tool
from support.net import LOOPBACK, port_open
from support.process import Server

# --- git servers ------------------------------------------------------------


def init_bare(base_dir: Path, name: str) -> Path:
    """``git init --bare BASE/name`` (HEAD -> main); returns its path."""
    path = base_dir / name
    subprocess.run(
        [require_tool("git"), "init", "--quiet", "--bare", "-b", "main", str(path)],
        check=True,
        capture_output=True,
        env=clean_env({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}),
    )
    return path


def sibling_workdir(base_dir: Path, kind: str) -> Path:
    base_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{base_dir.name}-{kind}-", dir=base_dir.parent))


class GitDaemon(Server):
    """``git daemon`` serving every repository under ``base_dir`` (push enabled).

    Its log and HOME go to ``workdir`` (default: a fresh folder beside base_dir).
    """

    def __init__(
        self, base_dir: Path, *, workdir: Path | None = None, timeout: float = 10.0
    ) -> None:
        super().__init__()
        git = require_tool("git")
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or sibling_workdir(self.base_dir, "git-daemon")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "git-daemon.log"
        self.process, self.port = self._start_process(
            lambda port: [
                git,
                "daemon",
                "--reuseaddr",
                f"--base-path={self.base_dir}",
                "--export-all",
                "--enable=receive-pack",
                f"--listen={LOOPBACK}",
                f"--port={port}",
                "--informative-errors",
                "--verbose",
                str(self.base_dir),
            ],
            self.log,
            port_open,
            "git daemon",
            timeout=timeout,
            env=git_env(self.workdir / "home"),
        )

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def url(self, name: str) -> str:
        return f"git://{self.host}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)
