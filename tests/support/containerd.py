"""A containerd daemon of its own (root, state, socket; no CRI plugin), driven
with ``ctr``."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from support.env import clean_env, require_tool
from support.process import Process, Server, ServerError


class Containerd(Server):
    """A containerd daemon with its own root, state and socket (no CRI plugin)."""

    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        super().__init__()
        self.binary = require_tool("containerd")
        self.ctr_binary = require_tool("ctr")
        # A short folder: the socket path must fit in sun_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ctd-"))
        self.socket = self.dir / "c.sock"
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{workdir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.dir / "c.ttrpc"}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "containerd.log"
        self.process = Process([self.binary, "--config", str(config)], self.log, env=clean_env())
        self._on_stop(self.process.stop)
        self._on_stop(self._remove_dir)
        try:
            self.process.wait_ready(self._ready, timeout, "containerd")
        except ServerError:
            self.stop()
            raise

    def _remove_dir(self) -> None:
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)

    def _ready(self) -> bool:
        return self.socket.exists() and self.ctr("version").returncode == 0

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ctr_binary, "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
        )
