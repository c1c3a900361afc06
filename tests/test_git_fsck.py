"""git objects that `git fsck --strict` refuses never land in a target (issue 11,
item 7), whichever way the import goes: bare repositories (fetch from the bundle,
where git 2.39 ignores fetch.fsckObjects), a server that takes the pack as it is
(receive-pack over git:// and smart HTTP), and a server staged through a scratch
repository (an incremental bundle). The objects are made for real with `git
mktree` and `git hash-object --literally`; `git fsck --strict` on the target is
the judge."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from airbundle.adapters.git_targets import RemoteTarget
from airbundle.errors import EXIT_IO, EXIT_OK, TargetError
from airbundle.format.manifest import RefEntry, RepoEntry
from airbundle.limits import Limits
from support.crafting import World, make_manifest, world, write_bundle
from support.env import AIRBUNDLE, require_tool
from support.git_daemon import GitDaemon
from support.git_http import GitHttpServer
from support.integration import starts_servers

BAD = ["hasDotgit", "hasDotdot", "missingEmail"]
IDENT = {
    "GIT_AUTHOR_NAME": "A",
    "GIT_AUTHOR_EMAIL": "a@example.com",
    "GIT_AUTHOR_DATE": "1704067200 +0000",
    "GIT_COMMITTER_NAME": "A",
    "GIT_COMMITTER_EMAIL": "a@example.com",
    "GIT_COMMITTER_DATE": "1704067200 +0000",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def git(*args: object, stdin: bytes | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        [require_tool("git"), *map(str, args)],
        input=stdin,
        capture_output=True,
        env={**os.environ, **IDENT, "GIT_CONFIG_NOSYSTEM": "1"},
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr.decode())
    return proc.stdout.decode().strip()


def fsck_strict(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), "fsck", "--strict", "--no-dangling"],
        capture_output=True,
        text=True,
        check=False,
    )


def good_commit(repo: Path) -> str:
    blob = git("-C", repo, "hash-object", "-w", "--stdin", stdin=b"hello\n")
    tree = git("-C", repo, "mktree", stdin=f"100644 blob {blob}\tREADME\n".encode())
    return git("-C", repo, "commit-tree", tree, "-m", "base")


def bad_commit(repo: Path, case: str, parent: str) -> str:
    """A commit on top of `parent` holding the object fsck refuses for `case`."""
    blob = git("-C", repo, "hash-object", "-w", "--stdin", stdin=b"payload\n")
    if case in ("hasDotgit", "hasDotdot"):
        name = ".git" if case == "hasDotgit" else ".."
        entries = f"100644 blob {blob}\tREADME\n100644 blob {blob}\t{name}\n"
        tree = git("-C", repo, "mktree", stdin=entries.encode())
        return git("-C", repo, "commit-tree", tree, "-p", parent, "-m", case)
    tree = git("-C", repo, "mktree", stdin=f"100644 blob {blob}\tREADME\n".encode())
    body = (
        f"tree {tree}\nparent {parent}\nauthor A 1704067200 +0000\n"
        f"committer A <a@example.com> 1704067200 +0000\n\nno email\n"
    )
    return git(
        "-C", repo, "hash-object", "-t", "commit", "-w", "--literally", "--stdin",
        stdin=body.encode(),
    )  # fmt: skip


def source_repo(tmp_path: Path, case: str | None) -> tuple[Path, str, str]:
    """A bare repository: base commit, then main at a commit that is bad for
    `case` (or a good one for None). (repo, base, tip)."""
    repo = tmp_path / "source.git"
    git("init", "--quiet", "--bare", repo)
    base = good_commit(repo)
    if case is None:
        tree = git("-C", repo, "rev-parse", f"{base}^{{tree}}")
        tip = git("-C", repo, "commit-tree", tree, "-p", base, "-m", "good")
    else:
        tip = bad_commit(repo, case, base)
    git("-C", repo, "update-ref", "refs/heads/main", tip)
    git("-C", repo, "update-ref", "refs/heads/base", base)
    return repo, base, tip


def signed_bundle(
    env: World, tmp_path: Path, source: Path, tip: str, *, since: str | None = None
) -> Path:
    """An airbundle carrying a git bundle of `source`'s main (thin on top of
    `since`, an incremental bundle), signed by the session key: what a careless
    or compromised producer whose key is trusted could send."""
    member = tmp_path / "app.bundle"
    spec = f"{since}..refs/heads/main" if since else "refs/heads/main"
    git("-C", source, "bundle", "create", "--quiet", member, spec)
    data = member.read_bytes()
    repo = RepoEntry(
        "app",
        "https://example.com/app.git",
        "repos/app.bundle",
        "sha1",
        (RefEntry("refs/heads/main", tip),),
        prerequisites=(since,) if since else (),
    )
    members = [("repos/app.bundle", data)]
    manifest = make_manifest(members, repos=[repo])
    return write_bundle(tmp_path / "b.airbundle", manifest, [], members, keys=[env.key])


def run(*args: object) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "AIRBUNDLE_PASSPHRASE"}
    return subprocess.run(
        [*AIRBUNDLE, *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=180,
        check=False,
    )


def do_import(
    env: World, bundle: Path, target: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    return run(
        "import", bundle, "--trust", env.pub_path, "--git", target,
        "--state-dir", tmp_path / "state",
    )  # fmt: skip


def refused(proc: subprocess.CompletedProcess[str], case: str) -> None:
    assert proc.returncode == EXIT_IO, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "repo 'app'" in proc.stderr and "fsck" in proc.stderr, proc.stderr
    assert case in proc.stderr, proc.stderr


# --- the premise: what git 2.39 does without airbundle's check -----------------------


def test_git_fetch_from_a_bundle_lands_objects_fsck_refuses(tmp_path: Path) -> None:
    """Why the check exists: fetch.fsckObjects does not apply to a bundle file, so
    the objects land and `git fsck --strict` fails on the target afterwards."""
    source, _base, tip = source_repo(tmp_path, "hasDotgit")
    bundle = tmp_path / "x.bundle"
    git("-C", source, "bundle", "create", "--quiet", bundle, "refs/heads/main")
    target = tmp_path / "target.git"
    git("init", "--quiet", "--bare", target)
    git(
        "-C", target, "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
        "fetch", "--quiet", bundle, "refs/heads/main:refs/heads/main",
    )  # fmt: skip
    assert git("-C", target, "rev-parse", "refs/heads/main") == tip
    assert fsck_strict(target).returncode != 0


# --- bare repositories ------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD)
def test_bad_objects_never_land_in_a_new_bare_repository(
    env: World, tmp_path: Path, case: str
) -> None:
    source, _base, tip = source_repo(tmp_path, case)
    bundle = signed_bundle(env, tmp_path, source, tip)
    target = tmp_path / "git"
    refused(do_import(env, bundle, str(target), tmp_path), case)
    assert not (target / "app.git").exists()  # created for the import, removed again
    assert not list((tmp_path / "state").glob("*.json"))


@pytest.mark.parametrize("case", BAD)
def test_bad_objects_never_land_in_an_existing_bare_repository_incrementally(
    env: World, tmp_path: Path, case: str
) -> None:
    source, base, tip = source_repo(tmp_path, case)
    target = tmp_path / "git"
    repo = target / "app.git"
    git("init", "--quiet", "--bare", repo)
    git("-C", repo, "fetch", "--quiet", source, "refs/heads/base:refs/heads/main")
    bundle = signed_bundle(env, tmp_path, source, tip, since=base)
    refused(do_import(env, bundle, str(target), tmp_path), case)
    assert fsck_strict(repo).returncode == 0, fsck_strict(repo).stderr
    assert git("-C", repo, "for-each-ref", "--format=%(refname) %(objectname)") == (
        f"refs/heads/main {base}"
    )
    assert git("-C", repo, "cat-file", "-t", tip, check=False) == ""


def test_a_good_bundle_still_lands_in_a_bare_repository(env: World, tmp_path: Path) -> None:
    source, _base, tip = source_repo(tmp_path, None)
    target = tmp_path / "git"
    proc = do_import(env, signed_bundle(env, tmp_path, source, tip), str(target), tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert fsck_strict(target / "app.git").returncode == 0
    assert git("-C", target / "app.git", "rev-parse", "refs/heads/main") == tip


# --- git servers: the pack pushed as it is, or staged ---------------------------------


@pytest.fixture(params=["git-daemon", "git-http"])
@starts_servers
def server(request: pytest.FixtureRequest) -> GitDaemon | GitHttpServer:
    return request.getfixturevalue(request.param.replace("-", "_"))  # type: ignore[no-any-return]


def _served(server: GitDaemon | GitHttpServer) -> tuple[Path, str]:
    if isinstance(server, GitDaemon):
        return server.init_bare("app.git"), f"git://{server.host}/{{name}}.git"
    return server.init_bare("app"), f"http://{server.host}/{{name}}"


@pytest.mark.parametrize("case", BAD)
def test_bad_objects_are_never_pushed_to_a_server_as_a_pack(
    env: World, tmp_path: Path, server: GitDaemon | GitHttpServer, case: str
) -> None:
    """A full bundle for new refs goes to receive-pack as it is; the servers here
    do not set receive.fsckObjects, so only airbundle's check stands in the way."""
    repo, template = _served(server)
    source, _base, tip = source_repo(tmp_path, case)
    refused(do_import(env, signed_bundle(env, tmp_path, source, tip), template, tmp_path), case)
    assert fsck_strict(repo).returncode == 0, fsck_strict(repo).stderr
    assert git("-C", repo, "for-each-ref") == ""
    assert git("-C", repo, "cat-file", "-t", tip, check=False) == ""


def test_bad_objects_are_never_pushed_from_a_staged_incremental_bundle(
    env: World, tmp_path: Path, git_daemon: GitDaemon
) -> None:
    repo = git_daemon.init_bare("app.git")
    source, base, tip = source_repo(tmp_path, "hasDotgit")
    git("-C", source, "push", "--quiet", git_daemon.url("app.git"), "base:refs/heads/main")
    bundle = signed_bundle(env, tmp_path, source, tip, since=base)
    refused(do_import(env, bundle, f"git://{git_daemon.host}/{{name}}.git", tmp_path), "hasDotgit")
    assert fsck_strict(repo).returncode == 0, fsck_strict(repo).stderr
    assert git("-C", repo, "rev-parse", "refs/heads/main") == base


def test_a_good_bundle_still_goes_to_a_server_as_a_pack(
    env: World, tmp_path: Path, server: GitDaemon | GitHttpServer
) -> None:
    repo, template = _served(server)
    source, _base, tip = source_repo(tmp_path, None)
    proc = do_import(env, signed_bundle(env, tmp_path, source, tip), template, tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert fsck_strict(repo).returncode == 0
    assert git("-C", repo, "rev-parse", "refs/heads/main") == tip


@pytest.mark.parametrize("case", BAD)
def test_bad_objects_in_a_pack_sent_while_checked_never_land_on_the_server(
    tmp_path: Path, git_daemon: GitDaemon, case: str
) -> None:
    """git:// and a large pack: the pack goes to receive-pack while airbundle
    checks it, all but its last bytes (limits lowered here so that this small
    pack takes that path); the check fails, the connection closes, the server
    never has the whole pack: no ref, no object in its repository."""
    repo = git_daemon.init_bare("app.git")
    source, _base, tip = source_repo(tmp_path, case)
    member = tmp_path / "app.bundle"
    git("-C", source, "bundle", "create", "--quiet", member, "refs/heads/main")
    limits = Limits(git_push_overlap_min_bytes=0, git_push_held_bytes=20)
    target = RemoteTarget(f"git://{git_daemon.host}/{{name}}.git", scratch=tmp_path, limits=limits)
    try:
        with pytest.raises(TargetError) as caught:
            target.stage("app", member, [("refs/heads/main", tip)])
    finally:
        target.close()

    assert "fsck" in caught.value.message and case in caught.value.message
    assert git("-C", repo, "for-each-ref") == ""
    assert git("-C", repo, "cat-file", "-t", tip, check=False) == ""
    assert fsck_strict(repo).returncode == 0, fsck_strict(repo).stderr


def test_a_good_pack_sent_while_checked_lands_when_published(
    tmp_path: Path, git_daemon: GitDaemon
) -> None:
    repo = git_daemon.init_bare("app.git")
    source, _base, tip = source_repo(tmp_path, None)
    member = tmp_path / "app.bundle"
    git("-C", source, "bundle", "create", "--quiet", member, "refs/heads/main")
    limits = Limits(git_push_overlap_min_bytes=0, git_push_held_bytes=20)
    target = RemoteTarget(f"git://{git_daemon.host}/{{name}}.git", scratch=tmp_path, limits=limits)
    refs = [("refs/heads/main", tip)]
    try:
        target.stage("app", member, refs)
        assert git("-C", repo, "for-each-ref") == ""
        target.publish("app", refs, head="refs/heads/main", force=False)
    finally:
        target.close()

    assert git("-C", repo, "rev-parse", "refs/heads/main").strip() == tip
    assert fsck_strict(repo).returncode == 0
