"""Debian's docker-registry as a pull-through cache (``proxy.remoteurl``) in front
of another registry."""

from __future__ import annotations

from pathlib import Path

from support.env import clean_env, require_tool
from support.net import free_port, http_request
from support.process import Process, Server, ServerError


class PullThroughCache(Server):
    """Debian's docker-registry configured as a pull-through cache (proxy.remoteurl)."""

    def __init__(self, workdir: Path, remote: str, timeout: float = 30.0) -> None:
        super().__init__()
        binary = require_tool("docker-registry")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "cache.log"
        self.port = free_port()
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: info}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'storage'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n"
            f"proxy: {{remoteurl: {remote}}}\n"
        )
        self.process = Process([binary, "serve", str(config)], self.log, env=clean_env())
        self._on_stop(self.process.stop)
        try:
            self.process.wait_ready(self._ready, timeout, "docker-registry (pull-through)")
        except ServerError:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            return http_request(f"http://127.0.0.1:{self.port}/v2/", timeout=1).status == 200
        except OSError:
            return False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"
