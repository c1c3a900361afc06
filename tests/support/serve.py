"""``airbundle serve`` itself, as a test server: started on 127.0.0.1 port 0, ready
once it prints the URL it serves on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.env import AIRBUNDLE, clean_env
from support.net import http_request
from support.process import Process, Server, ServerError

READY = re.compile(r"serving on (https?://\S+)")


class Serve(Server):
    """`airbundle serve ARGS --listen 127.0.0.1:0`; `.url` once it listens."""

    what = "airbundle serve"

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"serve-{time.monotonic_ns()}.log"
        argv = [*AIRBUNDLE, "serve", *args]
        if "--listen" not in args:
            argv += ["--listen", "127.0.0.1:0"]
        self.process = Process(self.wrap(argv), self.log, env=clean_env(env))
        self._on_stop(self.process.stop)
        self.url = ""
        try:
            self.process.wait_ready(self._ready, timeout, self.what)
        except ServerError:
            self.stop()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that runs `argv` (a subclass runs it somewhere else)."""
        return argv

    def _ready(self) -> bool:
        match = READY.search(self.log.read_text(errors="replace"))
        if match:
            self.url = match.group(1)
        return bool(match)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def get(self, path: str, **kwargs: Any) -> Any:
        return http_request(self.url + path, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def page_without_addresses(server: Serve) -> dict[str, Any]:
    """The status page as JSON, without what depends on where the server
    listens (its address, pull commands, clone URLs): two servers of the same
    content compare equal."""
    page: dict[str, Any] = json.loads(
        server.get("/", headers={"Accept": "application/json"}).body
    )
    page.pop("address")
    for image in page["images"]:
        image.pop("pull")
    for repo in page["repos"]:
        repo.pop("url")
    return page
