"""A git server's HEAD: which branch `git clone` checks out.

A push never moves a remote's HEAD, and a repository created on a server
before the first import often points it at a branch that will never exist
(`refs/heads/master` when the carried branch is `main`): clones then check
nothing out. Where the repository can be reached as files (a folder, a
file:// URL) or through a shell (ssh), HEAD is set like `git symbolic-ref`
would; git:// and smart HTTP offer no way, so the caller gets a note naming
the command that fixes it on the server.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass

from airbundle.adapters.git import redact, run_git
from airbundle.errors import TargetError
from airbundle.format.paths import check_ref_name

_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
# The remote command gets this long to answer (an ssh login, one git call).
SSH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Location:
    """Where a repository URL points, as far as setting HEAD goes."""

    kind: str  # "local", "ssh" or "server" (git://, http(s)://: no way in)
    path: str  # the repository's path (on the server for ssh and server)
    host: str = ""  # ssh: [user@]host
    port: str = ""  # ssh: the port, if given


def locate(url: str) -> Location:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return Location("local", urllib.parse.unquote(parts.path))
    if parts.scheme in _SSH_SCHEMES:
        user = f"{parts.username}@" if parts.username else ""
        path = urllib.parse.unquote(parts.path)
        if path.startswith("/~"):  # ssh://host/~/x is ~/x, as git reads it
            path = path[1:]
        return Location("ssh", path, f"{user}{parts.hostname or ''}", str(parts.port or ""))
    if "://" in url:
        return Location("server", parts.path)
    head, colon, rest = url.partition(":")
    if colon and "/" not in head:  # scp-like [user@]host:path
        return Location("ssh", rest, head)
    return Location("local", url)


def remote_head(
    url: str, head: str, *, env: dict[str, str] | None, what: str
) -> tuple[str | None, bool]:
    """The branch the server's HEAD names (None if it names no branch it has:
    an unborn `master`, say), and whether the server has `head`."""
    proc = run_git(
        ["ls-remote", "--symref", "--", url, "HEAD", head], error=TargetError, what=what, env=env
    )
    current, has = None, False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        target, _, name = line.partition("\t")
        if name == "HEAD" and target.startswith("ref: "):
            current = target.removeprefix("ref: ").strip()
        has = has or name == head
    return current, has


def set_head(url: str, head: str, *, env: dict[str, str] | None, what: str) -> str | None:
    """Point the repository's HEAD at `head`. None when it is (or already
    was) so; otherwise a note for the operator: why not, and the command."""
    check_ref_name(head, error=TargetError)
    current, has = remote_head(url, head, env=env, what=what)
    if current == head or not has:
        # Nothing to do, or nothing to point at (the branch is not there).
        return None
    where = locate(url)
    problem = _try(where, head, env=env, what=what)
    if problem is None:
        return None
    was = f"names {current}" if current else "names no branch it has"
    command = f"git --git-dir={shlex.quote(where.path)} symbolic-ref HEAD {head}"
    return (
        f"{what}: the server's HEAD {was}, the bundle's is {head}, so `git clone` checks "
        f"out {'another branch' if current else 'nothing'}; {problem}. On the server, run "
        f"`{command}` (the path as the server sees it; GitLab, Gitea, Forgejo: set the "
        "default branch in the project's settings)"
    )


def _try(where: Location, head: str, *, env: dict[str, str] | None, what: str) -> str | None:
    """Set HEAD where the location allows it; None on success, else why not."""
    if where.kind == "local":
        run_git(
            ["--git-dir", where.path, "symbolic-ref", "HEAD", head],
            error=TargetError,
            what=what,
            env=env,
        )
        return None
    if where.kind == "ssh":
        return _over_ssh(where, head)
    return "git:// and HTTP servers do not let a client set it"


def _ssh_argv() -> list[str]:
    """The ssh git itself would run: GIT_SSH_COMMAND, GIT_SSH, or ssh."""
    command = os.environ.get("GIT_SSH_COMMAND")
    if command:
        return shlex.split(command)
    return [os.environ.get("GIT_SSH") or "ssh"]


def _remote_path(path: str) -> str:
    # A leading ~ must stay unquoted for the remote shell to expand it.
    if path.startswith("~"):
        user, slash, rest = path.partition("/")
        return user + slash + shlex.quote(rest) if rest else user
    return shlex.quote(path)


def _over_ssh(where: Location, head: str) -> str | None:
    remote = f"git --git-dir={_remote_path(where.path)} symbolic-ref HEAD {shlex.quote(head)}"
    argv = [*_ssh_argv(), *(["-p", where.port] if where.port else []), "--", where.host, remote]
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=SSH_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ssh could not run it ({exc})"
    if proc.returncode == 0:
        return None
    said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    reason = redact(said[-1]) if said else f"exit {proc.returncode}"
    return f"the ssh account runs no shell commands ({reason})"
