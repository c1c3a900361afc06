"""Git repositories fetched from real git servers on export and pushed into them on import.

The servers are ``git daemon`` (git://) and nginx + fcgiwrap + ``git http-backend``
(smart HTTP, with and without Basic auth), all on 127.0.0.1. The judges are git
itself: ``git ls-remote`` against the server, ``git bundle list-heads`` on the member
unpacked with tar and zstd, ``git clone`` + ``git fsck --strict``, and
``git verify-pack`` on the export cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airbundle.adapters.git_targets import RemoteTarget
from airbundle.adapters.registry.transport import TLSConfig, Transport
from airbundle.errors import RefUpdateError, SourceError, SpecError, TargetError
from airbundle.ops.export import ExportResult
from airbundle.ops.specfile import load_spec
from support.bundles import export_spec, import_, repo_entry, write_spec
from support.env import git_env, hermetic
from support.git_daemon import GitDaemon
from support.git_http import GitHttpServer
from support.integration import starts_servers
from support.keys import KeyPair
from support.net import TEST_CREDS
from support.pki import CertAuthority, CertPair
from support.sshd import GitSshServer

PASSWORD = TEST_CREDS[1]
Server = GitDaemon | GitHttpServer


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user or system git config, no credentials, no proxies."""
    root = tmp_path / "env"
    hermetic(monkeypatch, root, git=True)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return root


# --- helpers ----------------------------------------------------------------


def git(*args: str | Path, cwd: Path | None = None, home: Path) -> str:
    proc = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env=git_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"git {args} failed:\n{proc.stderr}"
    return proc.stdout


def ls_remote(url: str, home: Path) -> dict[str, str]:
    """Branches and tags as the server advertises them (no HEAD, no peeled ^{})."""
    out = git("ls-remote", "--refs", url, home=home)
    refs = {}
    for line in out.splitlines():
        oid, ref = line.split("\t")
        if ref.startswith(("refs/heads/", "refs/tags/")):
            refs[ref] = oid
    return refs


def manifest_refs(result: ExportResult | Any, name: str = "gitops") -> dict[str, str]:
    repo = next(r for r in result.manifest.repos if r.name == name)
    return {r.name: r.target for r in repo.refs}


def unpack(bundle: Path, dest: Path) -> Path:
    """The bundle as plain files (tar + zstd only); returns the folder."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xf", str(bundle), "-C", str(dest)], check=True)
    return dest


def bundle_heads(member: Path, home: Path) -> dict[str, str]:
    out = git("bundle", "list-heads", member, home=home)
    return {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}


def clone_and_fsck(url: str, dest: Path, home: Path, *options: str) -> str:
    """git clone + git fsck --strict; the clone's HEAD commit."""
    git("clone", "--quiet", *options, url, dest, home=home)
    git("-C", dest, "fsck", "--strict", "--no-dangling", home=home)
    return git("-C", dest, "rev-parse", "HEAD", home=home).strip()


def seed(server: Server, sample_tree: Path, home: Path) -> str:
    """The samples' gitops repository, pushed to the server as gitops.git; its URL."""
    server.init_bare("gitops.git")
    url = server.url("gitops.git")
    git(
        "-C",
        sample_tree / "gitops",
        "push",
        "--quiet",
        url,
        "refs/heads/*:refs/heads/*",
        "refs/tags/*:refs/tags/*",
        home=home,
    )
    return url


@pytest.fixture(params=["git-daemon", "git-http"])
@starts_servers
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    if request.param == "git-daemon":
        return request.getfixturevalue("git_daemon")  # type: ignore[no-any-return]
    return request.getfixturevalue("git_http")  # type: ignore[no-any-return]


def target_template(server: Server) -> str:
    """--git for a server: git://HOST/{name}.git, or http://HOST/{name} (as in README)."""
    if isinstance(server, GitDaemon):
        server.init_bare("gitops.git")
        return f"git://{server.host}/{{name}}.git"
    server.init_bare("gitops")
    return f"http://{server.host}/{{name}}"


def work_clone(url: str, dest: Path, home: Path) -> Path:
    git("clone", "--quiet", url, dest, home=home)
    return dest


def commit_file(work: Path, name: str, text: str, message: str, home: Path) -> str:
    (work / name).write_text(text)
    git("-C", work, "add", name, home=home)
    git("-C", work, "commit", "--quiet", "-m", message, home=home)
    return git("-C", work, "rev-parse", "HEAD", home=home).strip()


# --- export from git servers ------------------------------------------------


def test_export_from_a_git_server(
    server: Server, sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    url = seed(server, sample_tree, home)
    result = export_spec(tmp_path, signing_key, repos=[repo_entry("gitops", url)])
    (repo,) = result.manifest.repos
    assert repo.url == url
    assert repo.head == "refs/heads/main"
    served = ls_remote(url, home)
    assert manifest_refs(result) == served
    assert set(served) == {"refs/heads/main", "refs/heads/release-1.0", "refs/tags/v1.0"}
    # The member is a complete git bundle: git alone lists, clones and checks it.
    member = unpack(result.path, tmp_path / "unpacked") / "repos" / "gitops.bundle"
    assert bundle_heads(member, home) == served
    # (A bundle carries refs, not HEAD: the manifest records HEAD; name the branch.)
    head = clone_and_fsck(str(member), tmp_path / "clone", home, "--branch", "main")
    assert head == served["refs/heads/main"]
    git("-C", tmp_path / "clone", "bundle", "verify", "--quiet", member, home=home)


def test_a_fresh_fetch_goes_into_the_bundle_as_the_fetched_pack(
    server: Server, sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    url = seed(server, sample_tree, home)
    cache = tmp_path / "cache"

    result = export_spec(tmp_path, signing_key, repos=[repo_entry("gitops", url)], cache_dir=cache)

    (mirror,) = (cache / "git").glob("*-gitops.git")
    (pack,) = (mirror / "objects" / "pack").glob("*.pack")
    member = unpack(result.path, tmp_path / "unpacked") / "repos" / "gitops.bundle"
    data = member.read_bytes()
    header, _, rest = data.partition(b"\n\n")
    # No second pack-objects run: the member is a v2 header, then the pack as fetched.
    assert rest == pack.read_bytes()
    assert header.splitlines()[0] == b"# v2 git bundle"
    served = ls_remote(url, home)
    assert bundle_heads(member, home) == served
    clone = tmp_path / "clone"
    assert clone_and_fsck(str(member), clone, home, "--branch", "main") == served["refs/heads/main"]
    git("-C", clone, "bundle", "verify", "--quiet", member, home=home)
    # Every object in the pack is one the refs need (the clone reaches them all).
    count = git("-C", clone, "rev-list", "--objects", "--all", "--count", home=home)
    listing = git("verify-pack", "-v", pack.with_suffix(".idx"), home=home)
    in_pack = sum(
        1 for line in listing.splitlines() if len(line.split()) >= 5 and len(line.split()[0]) == 40
    )
    assert in_pack == int(count.strip())


def git_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that logs each command line, then runs the real git."""
    real = shutil.which("git")
    spy = tmp_path / "spy"
    spy.mkdir()
    log = tmp_path / "git-commands.log"
    (spy / "git").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (spy / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy}{os.pathsep}{os.environ['PATH']}")
    return log


def test_an_unchanged_cache_still_goes_into_the_bundle_as_its_pack(
    git_daemon: GitDaemon,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # plan, then export (or two exports) with nothing new upstream: the second
    # fetch brings nothing, the cache still holds one pack of exactly the refs.
    home = tmp_path / "git-home"
    url = seed(git_daemon, sample_tree, home)
    cache = tmp_path / "cache"
    export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="first", cache_dir=cache
    )
    log = git_spy(tmp_path, monkeypatch)

    second = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="second", cache_dir=cache
    )

    assert "fetch" in log.read_text() and "bundle create" not in log.read_text()

    (pack,) = next((cache / "git").glob("*-gitops.git")).joinpath("objects", "pack").glob("*.pack")
    member = unpack(second.path, tmp_path / "unpacked") / "repos" / "gitops.bundle"
    assert member.read_bytes().partition(b"\n\n")[2] == pack.read_bytes()
    assert bundle_heads(member, home) == ls_remote(url, home)


def test_export_refuses_a_malformed_object_from_upstream(
    git_daemon: GitDaemon, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    repo = git_daemon.init_bare("evil.git")
    tree = git("-C", repo, "hash-object", "-w", "-t", "tree", "/dev/null", home=home).strip()
    raw = tmp_path / "commit"
    raw.write_text(f"tree {tree}\nauthor no-email 0 +0000\ncommitter c <c@c> 0 +0000\n\nx\n")
    bad = git(
        "-C", repo, "hash-object", "--literally", "-w", "-t", "commit", raw, home=home
    ).strip()  # fmt: skip
    git("-C", repo, "update-ref", "refs/heads/main", bad, home=home)

    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, repos=[repo_entry("gitops", git_daemon.url("evil.git"))])

    assert "evil.git" in caught.value.message
    assert "fsck" in caught.value.message.lower() or bad[:7] in caught.value.message
    assert not list((tmp_path / "out").glob("*.airbundle"))


def git_children(trace: Path) -> list[str]:
    """The command lines of the git processes git started (GIT_TRACE2_EVENT)."""
    out = []
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "child_start":
            out.append(" ".join(event.get("argv", [])))
    return out


def test_a_first_fetch_walks_the_history_once(
    git_daemon: GitDaemon,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # git fetch would walk every object after indexing (rev-list --objects
    # --stdin --not --all); fetch-pack's self-contained pack needs no walk, so
    # the one walk left is the export's reachability check of the pack.
    home = tmp_path / "git-home"
    url = seed(git_daemon, sample_tree, home)
    trace = tmp_path / "trace2.json"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
    log = git_spy(tmp_path, monkeypatch)

    result = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], cache_dir=tmp_path / "cache"
    )

    assert manifest_refs(result) == ls_remote(url, home)
    commands = log.read_text()
    assert "fetch-pack" in commands and " fetch " not in f" {commands} "
    walks = [c for c in commands.splitlines() if "rev-list" in c and "--objects" in c]
    walks += [c for c in git_children(trace) if "rev-list" in c and "--objects" in c]
    assert len(walks) == 1, walks
    assert "index-pack" in " ".join(git_children(trace))  # the pack was indexed (--strict)
    assert any("--strict" in c for c in git_children(trace) if "index-pack" in c)


def test_a_ref_deleted_upstream_leaves_the_cache_and_the_next_bundle(
    git_daemon: GitDaemon,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    home = tmp_path / "git-home"
    url = seed(git_daemon, sample_tree, home)
    cache = tmp_path / "cache"
    first = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="first", cache_dir=cache
    )
    assert "refs/heads/release-1.0" in manifest_refs(first)
    work = work_clone(url, tmp_path / "work", home)
    git("-C", work, "push", "--quiet", "origin", ":refs/heads/release-1.0", home=home)
    new = commit_file(work, "kustomization.yaml", "resources: []\n", "empty it", home)
    git("-C", work, "push", "--quiet", "origin", "main", home=home)

    second = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="second", cache_dir=cache
    )

    assert manifest_refs(second) == ls_remote(url, home)
    assert manifest_refs(second)["refs/heads/main"] == new
    assert "refs/heads/release-1.0" not in manifest_refs(second)
    (mirror,) = (cache / "git").glob("*-gitops.git")
    cached = git("-C", mirror, "for-each-ref", "--format=%(refname)", home=home).split()
    assert "refs/heads/release-1.0" not in cached and "refs/heads/main" in cached
    # Every fetch's pack is an ordinary one: no .keep left behind by fetch-pack.
    assert list((mirror / "objects" / "pack").glob("*.keep")) == []
    member = unpack(second.path, tmp_path / "unpacked") / "repos" / "gitops.bundle"
    clone = tmp_path / "clone"
    assert clone_and_fsck(str(member), clone, home, "--branch", "main") == new


def test_credentials_in_the_url_stay_out_of_the_bundle_and_cache(
    git_http_auth: GitHttpServer, sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    server = git_http_auth
    server.init_bare("gitops.git")
    with_creds = server.url("gitops.git", TEST_CREDS)
    git(
        "-C",
        sample_tree / "gitops",
        "push",
        "--quiet",
        with_creds,
        "refs/heads/*:refs/heads/*",
        "refs/tags/*:refs/tags/*",
        home=home,
    )
    cache = tmp_path / "cache"
    result = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", with_creds)], cache_dir=cache
    )

    (repo,) = result.manifest.repos
    assert repo.url == f"http://{server.host}/gitops.git"
    assert manifest_refs(result) == ls_remote(with_creds, home)
    # The server really asked for (and got) the credentials.
    assert f"{TEST_CREDS[0]} " in server.access_log.read_text()
    # Not a byte of the password anywhere: unpacked members, decompressed stream, cache.
    unpacked = unpack(result.path, tmp_path / "unpacked")
    stream = subprocess.run(
        ["zstd", "-dc", str(result.path)], capture_output=True, check=True
    ).stdout
    assert PASSWORD.encode() not in stream
    for folder in (unpacked, cache):
        leaks = [
            p for p in folder.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()
        ]
        assert leaks == []
    inspected = subprocess.run(
        [sys.executable, "-m", "airbundle", "inspect", "--json", str(result.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert PASSWORD not in inspected and f"http://{server.host}/gitops.git" in inspected


def test_a_failed_fetch_does_not_reveal_the_password(
    git_http_auth: GitHttpServer, signing_key: KeyPair, tmp_path: Path
) -> None:
    url = git_http_auth.url("missing.git", TEST_CREDS)
    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, repos=[repo_entry("gitops", url)])
    assert f"{git_http_auth.host}/missing.git" in caught.value.message
    assert PASSWORD not in caught.value.diagnostics()
    assert not (tmp_path / "out" / "b.airbundle").exists()


def test_reexport_with_a_cache_fetches_only_the_new_commit(
    git_daemon: GitDaemon,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    home = tmp_path / "git-home"
    url = seed(git_daemon, sample_tree, home)
    # Export keeps every fetch as a pack (fetch.unpackLimit=1), so what each fetch
    # transferred can be read back from the cache with git verify-pack.
    cache = tmp_path / "cache"
    first = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="first", cache_dir=cache
    )
    (mirror,) = (cache / "git").glob("*-gitops.git")
    packs_before = set((mirror / "objects" / "pack").glob("*.pack"))
    assert len(packs_before) == 1

    work = work_clone(url, tmp_path / "work", home)
    new = commit_file(work, "kustomization.yaml", "resources: []\n", "empty it", home)
    git("-C", work, "push", "--quiet", "origin", "main", home=home)

    second = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", url)], name="second", cache_dir=cache
    )
    assert manifest_refs(second)["refs/heads/main"] == new
    assert manifest_refs(first)["refs/heads/main"] != new
    member = unpack(second.path, tmp_path / "unpacked") / "repos" / "gitops.bundle"
    assert bundle_heads(member, home)["refs/heads/main"] == new
    # Same cache repository, its old pack untouched, one new pack with exactly the
    # new commit, its root tree and the changed file.
    assert list((cache / "git").glob("*-gitops.git")) == [mirror]
    packs_after = set((mirror / "objects" / "pack").glob("*.pack"))
    assert packs_before < packs_after
    (new_pack,) = packs_after - packs_before
    listing = git("verify-pack", "-v", new_pack.with_suffix(".idx"), home=home)
    kinds = sorted(
        line.split()[1]
        for line in listing.splitlines()
        if len(line.split()) >= 3 and line.split()[1] in ("commit", "tree", "blob")
    )
    assert kinds == ["blob", "commit", "tree"], listing
    assert new in listing


# --- import into git servers ------------------------------------------------


@pytest.fixture
def gitops_bundle(sample_tree: Path, signing_key: KeyPair, tmp_path: Path) -> ExportResult:
    return export_spec(
        tmp_path,
        signing_key,
        repos=[repo_entry("gitops", str(sample_tree / "gitops"))],
        name="gitops",
        sequence=1,
    )


def test_import_into_a_git_server(
    server: Server, gitops_bundle: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    template = target_template(server)
    url = template.replace("{name}", "gitops")
    report = import_(gitops_bundle.path, signing_key, git=template)
    assert report.repos == [{"name": "gitops", "target": url, "refs": manifest_refs(gitops_bundle)}]
    assert ls_remote(url, home) == manifest_refs(gitops_bundle)
    head = clone_and_fsck(url, tmp_path / "clone", home)
    assert head == manifest_refs(gitops_bundle)["refs/heads/main"]
    # Nothing of the importer's staging namespace reached the server.
    everything = git("ls-remote", url, home=home)
    assert "airbundle" not in everything


def server_repo(server: Server) -> Path:
    """The bare repository target_template(server) names for "gitops"."""
    return server.base_dir / ("gitops.git" if isinstance(server, GitDaemon) else "gitops")


def test_a_first_import_sends_the_bundle_pack_without_staging_it_here(
    server: Server,
    gitops_bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def staged_here(*_args: object) -> None:
        raise AssertionError("the bundle was indexed locally before the push")

    monkeypatch.setattr(RemoteTarget, "_stage_here", staged_here)
    home = tmp_path / "git-home"
    template = target_template(server)
    url = template.replace("{name}", "gitops")

    import_(gitops_bundle.path, signing_key, git=template)

    assert ls_remote(url, home) == manifest_refs(gitops_bundle)
    git("-C", server_repo(server), "fsck", "--strict", "--no-dangling", home=home)
    assert (
        clone_and_fsck(url, tmp_path / "clone", home)
        == manifest_refs(gitops_bundle)["refs/heads/main"]
    )


def bundle_of(source: Path, dest: Path, home: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A full git bundle of the samples' gitops history with a commit of 9 MiB of
    seeded random bytes on top (a pack over Limits.git_push_overlap_min_bytes),
    and its refs."""
    work = work_clone(str(source), dest.with_suffix(".work"), home)
    git("-C", work, "branch", "--quiet", "release-1.0", "origin/release-1.0", home=home)
    (work / "data.bin").write_bytes(random.Random(14).randbytes(9 << 20))  # noqa: S311
    git("-C", work, "add", "data.bin", home=home)
    git("-C", work, "commit", "--quiet", "-m", "data", home=home)
    git("-C", work, "bundle", "create", "--quiet", dest, "--branches", "--tags", home=home)
    heads = bundle_heads(dest, home)
    return dest, sorted((ref, oid) for ref, oid in heads.items() if ref.startswith("refs/"))


def server_packs(repo: Path) -> list[Path]:
    """Packs under the repository's objects, and receive-pack's quarantine
    folders (objects/tmp_objdir-incoming-*, where an incoming pack is written)."""
    objects = repo / "objects"
    return sorted([*objects.rglob("*.pack"), *objects.glob("tmp_objdir-incoming-*")])


def receive_pack_pids(repo: Path) -> list[int]:
    """The receive-pack processes running in `repo` (git daemon starts them
    there: `receive-pack .`)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "receive-pack" in args:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cwd").resolve() == repo.resolve():
                    pids.append(int(pid))
    return pids


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_git_push_held_from_staging_moves_nothing_until_published(
    git_daemon: GitDaemon, sample_tree: Path, tmp_path: Path
) -> None:
    # git://: the pack goes to receive-pack while the objects are checked here,
    # all but its last bytes; the server can land nothing without them.
    home = tmp_path / "git-home"
    template = target_template(git_daemon)
    url = template.replace("{name}", "gitops")
    bundle, refs = bundle_of(sample_tree / "gitops", tmp_path / "gitops.bundle", home)
    target = RemoteTarget(template, scratch=tmp_path)
    try:
        target.stage("gitops", bundle, refs)
        assert target.refused("gitops", refs) == []

        # The pack is with the server, in receive-pack's quarantine, not landed.
        assert wait_for(lambda: bool(server_packs(server_repo(git_daemon))))
        assert all(
            p.name.startswith("tmp_objdir-incoming-") for p in server_packs(server_repo(git_daemon))
        )
        assert ls_remote(url, home) == {}
        tip = dict(refs)["refs/heads/main"]
        assert git("-C", server_repo(git_daemon), "rev-list", "--all", home=home) == ""

        target.publish("gitops", refs, head="refs/heads/main", force=False)
    finally:
        target.close()

    assert ls_remote(url, home) == dict(refs)
    git("-C", server_repo(git_daemon), "fsck", "--strict", "--no-dangling", home=home)
    assert clone_and_fsck(url, tmp_path / "clone", home, "--branch", "main") == tip


def test_a_held_git_push_dropped_by_a_failed_import_leaves_nothing_on_the_server(
    git_daemon: GitDaemon, sample_tree: Path, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    template = target_template(git_daemon)
    url = template.replace("{name}", "gitops")
    bundle, refs = bundle_of(sample_tree / "gitops", tmp_path / "gitops.bundle", home)
    target = RemoteTarget(template, scratch=tmp_path)
    target.stage("gitops", bundle, refs)

    target.discard("gitops")  # what the importer does when a later step fails
    target.close()

    # receive-pack sees the pack end early and fails: its objects stay in its
    # quarantine (objects/tmp_objdir-incoming-*, which git prune removes
    # later), never in the repository's object store.
    repo = server_repo(git_daemon)
    assert wait_for(lambda: not receive_pack_pids(repo))
    counted = dict(
        line.split(": ") for line in git("-C", repo, "count-objects", "-v", home=home).splitlines()
    )
    assert counted["count"] == "0" and counted["in-pack"] == "0", counted
    assert list((repo / "objects" / "pack").glob("*.pack")) == []
    git("-C", repo, "fsck", "--strict", "--no-dangling", home=home)
    assert ls_remote(url, home) == {}
    tip = dict(refs)["refs/heads/main"]
    absent = subprocess.run(
        ["git", "-C", str(server_repo(git_daemon)), "cat-file", "-e", tip],
        env=git_env(home),
        capture_output=True,
        check=False,
    )
    assert absent.returncode != 0
    # The same bundle imports once the failure is gone.
    again = RemoteTarget(template, scratch=tmp_path)
    try:
        again.stage("gitops", bundle, refs)
        again.publish("gitops", refs, head="refs/heads/main", force=False)
    finally:
        again.close()
    assert ls_remote(url, home) == dict(refs)


def test_a_held_git_push_whose_connection_is_gone_is_pushed_again_at_publish(
    git_daemon: GitDaemon, sample_tree: Path, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    template = target_template(git_daemon)
    url = template.replace("{name}", "gitops")
    bundle, refs = bundle_of(sample_tree / "gitops", tmp_path / "gitops.bundle", home)
    repo = server_repo(git_daemon)
    target = RemoteTarget(template, scratch=tmp_path)
    try:
        target.stage("gitops", bundle, refs)
        # The server side of the held connection ends (a restart, an idle limit).
        assert wait_for(lambda: bool(receive_pack_pids(repo)))
        for pid in receive_pack_pids(repo):
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not receive_pack_pids(repo))
        assert ls_remote(url, home) == {}

        target.publish("gitops", refs, head="refs/heads/main", force=False)
    finally:
        target.close()

    assert ls_remote(url, home) == dict(refs)
    git("-C", repo, "fsck", "--strict", "--no-dangling", home=home)


def test_a_push_the_server_refuses_is_reported_and_moves_nothing(
    server: Server, gitops_bundle: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    template = target_template(server)
    hook = server_repo(server) / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'policy: no pushes tonight' >&2\nexit 1\n")
    hook.chmod(0o755)

    with pytest.raises(TargetError) as caught:
        import_(gitops_bundle.path, signing_key, git=template, state_dir=tmp_path / "state")

    message = caught.value.message
    assert "refs/heads/main" in message and "pre-receive hook declined" in message, message
    assert ls_remote(template.replace("{name}", "gitops"), home) == {}
    recorded = [p.read_text() for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert not [t for t in recorded if str(gitops_bundle.manifest_digest) in t]


def test_import_into_a_missing_server_repository_names_the_url(
    git_daemon: GitDaemon, gitops_bundle: ExportResult, signing_key: KeyPair
) -> None:
    template = f"git://{git_daemon.host}/{{name}}.git"
    with pytest.raises(TargetError) as caught:
        import_(gitops_bundle.path, signing_key, git=template)
    assert f"git://{git_daemon.host}/gitops.git" in caught.value.message
    assert not (git_daemon.base_dir / "gitops.git").exists()


def test_non_fast_forward_on_the_server_is_refused_without_force(
    server: Server, sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    home = tmp_path / "git-home"
    work = work_clone(str(sample_tree / "gitops"), tmp_path / "work", home)
    for branch in ("release-1.0",):
        git("-C", work, "branch", "--quiet", branch, f"origin/{branch}", home=home)
    first = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", str(work))], name="first", sequence=1
    )
    template = target_template(server)
    url = template.replace("{name}", "gitops")
    import_(first.path, signing_key, git=template)
    assert ls_remote(url, home) == manifest_refs(first)

    # Rewrite history: main moves to a commit that does not descend from the old tip.
    git("-C", work, "reset", "--quiet", "--hard", "HEAD~1", home=home)
    rewritten = commit_file(work, "README", "rewritten\n", "rewritten", home)
    second = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", str(work))], name="second", sequence=2
    )
    assert manifest_refs(second)["refs/heads/main"] == rewritten

    before = git("ls-remote", url, home=home)
    with pytest.raises(RefUpdateError) as caught:
        import_(second.path, signing_key, git=template)
    assert "refs/heads/main" in caught.value.message
    assert "--force" in caught.value.diagnostics()
    assert git("ls-remote", url, home=home) == before  # nothing moved, nothing added

    import_(second.path, signing_key, git=template, force=True)
    assert ls_remote(url, home) == manifest_refs(second)
    assert clone_and_fsck(url, tmp_path / "clone", home) == rewritten


def test_credentials_in_the_git_target_template_are_not_recorded(
    git_http_auth: GitHttpServer,
    gitops_bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    env: Path,
) -> None:
    home = tmp_path / "git-home"
    git_http_auth.init_bare("gitops")
    user, password = TEST_CREDS
    template = f"http://{user}:{password}@{git_http_auth.host}/{{name}}"
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airbundle",
            "import",
            str(gitops_bundle.path),
            "--trust",
            str(signing_key.public),
            "--git",
            template,
            "--report",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with_creds = template.replace("{name}", "gitops")
    assert ls_remote(with_creds, home) == manifest_refs(gitops_bundle)  # it did work
    assert password not in proc.stdout + proc.stderr
    assert password not in report_file.read_text()
    state = [p for p in (env / "state").rglob("*") if p.is_file()]
    assert state and not [p for p in state if password.encode() in p.read_bytes()]


def test_a_server_that_wants_credentials_from_a_git_helper_gets_them_through_git_push(
    git_http_auth: GitHttpServer,
    gitops_bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    env: Path,
) -> None:
    # The template has no credentials; git's credential helper has them. Our own
    # push is refused (401) before anything changes, and git push takes over.
    git_http_auth.init_bare("gitops")
    user, password = TEST_CREDS
    store = env / "git-credentials"
    store.write_text(f"http://{user}:{password}@{git_http_auth.host}\n")
    (env / "home" / ".gitconfig").write_text(f"[credential]\n\thelper = store --file={store}\n")
    template = f"http://{git_http_auth.host}/{{name}}"

    import_(gitops_bundle.path, signing_key, git=template)

    with_creds = f"http://{user}:{password}@{git_http_auth.host}/gitops"
    assert ls_remote(with_creds, tmp_path / "git-home") == manifest_refs(gitops_bundle)


def test_export_from_and_import_into_git_over_ssh(
    git_ssh: GitSshServer,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ssh is not spoken by our own push: the import stages the bundle and runs
    # git push, which goes through the user's ssh set-up (GIT_SSH_COMMAND here).
    monkeypatch.setenv("GIT_SSH_COMMAND", git_ssh.ssh_command)
    home = tmp_path / "git-home"
    source = git_ssh.init_bare("gitops.git")
    git("-C", sample_tree / "gitops", "push", "--quiet", source,
        "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", home=home)  # fmt: skip
    target = git_ssh.init_bare("mirror-gitops.git")

    exported = export_spec(
        tmp_path, signing_key, repos=[repo_entry("gitops", git_ssh.url("gitops.git"))]
    )
    assert manifest_refs(exported) == ls_remote(str(source), home)
    import_(exported.path, signing_key, git=git_ssh.url("mirror-{name}.git"))

    assert ls_remote(str(target), home) == manifest_refs(exported)
    git("-C", target, "fsck", "--strict", "--no-dangling", home=home)


# --- refs that could be taken for options or escape their namespace ----------


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/-x",
        "refs/heads/--upload-pack=touch PWNED",
        "-refs/heads/main",
        "--all",
        "refs/heads/a..b",
        "refs/tags/../../config",
        "refs/heads/-*",  # a pattern: the message must quote it as written
    ],
)
def test_refs_starting_with_a_dash_or_holding_dot_dot_are_spec_errors(
    tmp_path: Path, ref: str
) -> None:
    entry = repo_entry("gitops", "git://127.0.0.1:9/gitops.git", ["refs/heads/main", ref])
    spec = write_spec(tmp_path / "spec.yaml", repos=[entry])
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    message = caught.value.message
    assert repr(ref) in message, message
    assert str(spec) in message and "refs[1]" in message
    assert not (tmp_path / "PWNED").exists()


# --- error kinds and TLS on the direct push ---------------------------------


def test_a_ref_moved_under_the_push_is_a_ref_update_error(
    git_http: GitHttpServer,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """git push's porcelain status, not its message text, tells a refused ref move."""
    home = tmp_path / "git-home"
    work = work_clone(str(sample_tree / "gitops"), tmp_path / "work", home)
    template = target_template(git_http)
    repos = [repo_entry("gitops", str(work))]
    first = export_spec(tmp_path, signing_key, repos=repos, name="first", sequence=1)
    import_(first.path, signing_key, git=template)
    git("-C", work, "reset", "--quiet", "--hard", "HEAD~1", home=home)
    commit_file(work, "README", "rewritten\n", "rewritten", home)
    second = export_spec(tmp_path, signing_key, repos=repos, name="second", sequence=2)
    # As if the server's ref moved between the fast-forward check and the push.
    monkeypatch.setattr(RemoteTarget, "refused", lambda *_args: [])

    with pytest.raises(RefUpdateError) as caught:
        import_(second.path, signing_key, git=template)

    assert "refs/heads/main" in caught.value.message
    assert "--force" in caught.value.diagnostics()


class TlsFront:
    """TLS in front of a plain HTTP server, as a reverse proxy would terminate it;
    a client must present a certificate from `ca_file`."""

    def __init__(self, backend: str, cert: CertPair, ca_file: Path) -> None:
        self.backend = backend
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert, cert.key)
        self.context.load_verify_locations(ca_file)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        host, port = self.backend.rsplit(":", 1)
        with tls, socket.create_connection((host, int(port))) as plain:
            # One thread per connection: an SSL socket must not be read and
            # written from two threads at once.
            while True:
                ready = [tls] if tls.pending() else select.select([tls, plain], [], [], 60)[0]
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    (plain if sock is tls else tls).sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_the_direct_https_push_uses_the_ca_file_and_client_certificate(
    git_http: GitHttpServer,
    gitops_bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = CertAuthority(tmp_path / "ca")
    client = ca.issue("importer", server=False, client=True)
    front = TlsFront(git_http.host, ca.issue("git-server"), ca.cert_file)
    git_http.init_bare("gitops")
    template = f"https://127.0.0.1:{front.port}/{{name}}"

    def staged_here(*_args: object) -> None:
        raise AssertionError("the direct push was not used: the bundle was staged here")

    monkeypatch.setattr(RemoteTarget, "_stage_here", staged_here)
    try:
        tls = TLSConfig(ca.cert_file, client.cert, client.key)
        import_(gitops_bundle.path, signing_key, git=template, transport=Transport(tls))
    finally:
        front.close()

    home = tmp_path / "git-home"
    assert ls_remote(f"http://{git_http.host}/gitops", home) == manifest_refs(gitops_bundle)
