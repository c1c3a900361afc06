"""serve's read-only folders: `/charts/` (the static Helm repository `import
--charts` wrote: `helm repo add NAME http://HOST/charts/`) and `/files/` (the
files `import --files` wrote).

A request names a path inside the folder; every component is checked (no
empty, `.` or `..` component, nothing that starts with `.`, which also hides
airbundle's temporary files) and looked up without following links: a link,
a device or anything but a regular file or folder is not served. Files go out
by aiohttp's FileResponse (Range, If-Modified-Since, HEAD, sendfile); a
folder answers a plain list of its entries (folders with a trailing `/`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from airbundle.format import distribution as dist

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def folder_handler(root: Path, prefix: str) -> Handler:
    """GET and HEAD of ROOT's files under /PREFIX/."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise dist.ApiError(dist.UNSUPPORTED, f"/{prefix}/ is read-only")
        tail = request.match_info.get("tail", "")
        parts = [p for p in tail.split("/")]
        if parts and parts[-1] == "":
            parts = parts[:-1]  # a folder asked for with its trailing slash
        path = _locate(root, parts)
        if path is None:
            raise dist.ApiError(dist.NOT_FOUND, f"/{prefix}/{tail[:200]}: not here")
        if path.is_dir():
            if not request.path.endswith("/"):
                raise web.HTTPMovedPermanently(request.path + "/")
            return web.Response(text=_listing(path), content_type="text/plain")
        return web.FileResponse(path)

    return handle


def _locate(root: Path, parts: list[str]) -> Path | None:
    """ROOT/parts, if every component is a real folder and the last a folder or
    a regular file; None otherwise."""
    path = root
    for i, part in enumerate(parts):
        if not part or part.startswith(".") or "\\" in part or "\0" in part:
            return None
        path = path / part
        try:
            info = os.lstat(path)
        except OSError:
            return None
        last = i == len(parts) - 1
        if stat.S_ISDIR(info.st_mode):
            continue
        if not (last and stat.S_ISREG(info.st_mode)):
            return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode) else None


def _listing(folder: Path) -> str:
    lines = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            lines.append(entry.name + "/")
        elif entry.is_file(follow_symlinks=False):
            lines.append(entry.name)
    return "".join(line + "\n" for line in lines)
