"""Git's side of `serve`: which repositories are published, their refs, and
smart HTTP through git's own `http-backend` (git speaks its protocol; we only
route, authenticate and stream).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from airbundle.adapters.content import RepoSummary
from airbundle.adapters.git import git_binary

log = logging.getLogger("airbundle.serve")

# Refs an import stages before it publishes (adapters/git.py): never shown.
STAGING = "refs/airbundle-incoming"
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
# Served to every client: partial clones (--filter) and hidden staging refs.
_CONFIG = (
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.hideRefs", STAGING),
    ("http.receivepack", "false"),
    ("http.uploadpack", "true"),
    ("http.getanyfile", "false"),
)


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [git_binary(), "--git-dir", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
        check=False,
    )


def published(repo: Path) -> bool:
    """A bare repository holding at least one branch or tag. One an import is
    still creating has only staging refs, and is not served yet."""
    if not (repo / "HEAD").is_file():
        return False
    proc = _run(repo, "for-each-ref", "--count=1", "--format=%(refname)", "refs/heads", "refs/tags")
    return proc.returncode == 0 and bool(proc.stdout.strip())


def summary(name: str, repo: Path, *, max_refs: int) -> RepoSummary:
    """Branches and tags with their commits and subject lines, and HEAD."""
    proc = _run(
        repo,
        "for-each-ref",
        f"--count={max_refs}",
        "--format=%(refname)%00%(objectname)%00%(*objectname)%00%(contents:subject)"
        "%00%(*contents:subject)",
        "refs/heads",
        "refs/tags",
    )
    refs = []
    subjects: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        fields = line.split("\0")
        if len(fields) != 5:
            continue
        ref, oid, peeled, subject, peeled_subject = fields
        commit = peeled or oid  # an annotated tag shows the commit it points at
        refs.append((ref, commit))
        subjects[commit] = peeled_subject if peeled else subject
    head = _run(repo, "symbolic-ref", "-q", "HEAD").stdout.strip() or None
    return RepoSummary(name, head, tuple(refs), subjects)


def is_push(path_info: str, query: Mapping[str, str]) -> bool:
    return path_info.endswith("/git-receive-pack") or query.get("service") == "git-receive-pack"


@dataclass(frozen=True)
class CgiRequest:
    method: str
    root: Path  # GIT_PROJECT_ROOT: the folder of NAME.git
    path_info: str  # /NAME.git/info/refs
    query: str
    content_type: str
    content_encoding: str
    git_protocol: str
    remote_user: str
    remote_addr: str


@dataclass
class CgiResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]


async def http_backend(request: CgiRequest, body: AsyncIterator[bytes]) -> CgiResponse:
    """Run `git http-backend` for one request: the request body goes to its
    stdin as it arrives, its CGI headers are parsed, the rest is streamed."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        **_ENV,
        "GIT_PROJECT_ROOT": str(request.root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": request.path_info,
        "QUERY_STRING": request.query,
        "REQUEST_METHOD": request.method,
        "CONTENT_TYPE": request.content_type,
        "REMOTE_USER": request.remote_user,
        "REMOTE_ADDR": request.remote_addr,
        "GIT_CONFIG_COUNT": str(len(_CONFIG)),
    }
    for i, (key, value) in enumerate(_CONFIG):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    if request.content_encoding:
        env["HTTP_CONTENT_ENCODING"] = request.content_encoding
    if request.git_protocol:
        env["GIT_PROTOCOL"] = request.git_protocol
    proc = await asyncio.create_subprocess_exec(
        git_binary(),
        "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            async for chunk in body:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.stdin.close()

    feeder = asyncio.create_task(feed())
    # Drained all along, so a chatty git never blocks on a full pipe.
    errors = asyncio.create_task(proc.stderr.read())
    status = 200
    headers: list[tuple[str, str]] = []
    while True:
        line = await proc.stdout.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        if key.lower() == "status":
            status = int(value.strip().split(" ", 1)[0] or 500)
        else:
            headers.append((key.strip(), value.strip()))

    async def stream() -> AsyncIterator[bytes]:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while chunk := await proc.stdout.read(1 << 16):
                yield chunk
            await feeder
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            feeder.cancel()
            message = (await errors).decode("utf-8", "replace").strip()
            if proc.returncode or message:
                log.warning(
                    "git http-backend %s: exit %s %s",
                    request.path_info,
                    proc.returncode,
                    message[:2000],
                )

    return CgiResponse(status, headers, stream())
