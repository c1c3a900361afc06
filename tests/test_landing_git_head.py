"""A usable HEAD on git servers (issue 17): repositories pre-created with HEAD
at refs/heads/master get the carried HEAD where the server allows it (bare
folders, ssh with a shell); where it does not (git daemon, smart HTTP), the
import says so with the command that fixes it, and that command works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AIRBUNDLE, KeyPair, hermetic
from servers import GitDaemon, GitHttpServer, GitSshServer, git_env, init_bare

from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.importer import ImportOptions, ImportReport, import_bundle
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy

MAIN = "refs/heads/main"


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "env"
    hermetic(monkeypatch, root, git=True)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return root


def _env(home: Path) -> dict[str, str]:
    ssh = os.environ.get("GIT_SSH_COMMAND")
    return git_env(home, {"GIT_SSH_COMMAND": ssh} if ssh else None)


def git(*args: str | Path, home: Path) -> str:
    proc = subprocess.run(
        ["git", *map(str, args)], env=_env(home), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def master_headed(base: Path, name: str) -> Path:
    """A bare repository as a server admin makes one: HEAD at refs/heads/master."""
    repo = init_bare(base, name)
    subprocess.run(
        ["git", "-C", str(repo), "symbolic-ref", "HEAD", "refs/heads/master"], check=True
    )
    return repo


@pytest.fixture
def bundle(sample_tree: Path, signing_key: KeyPair, tmp_path: Path) -> ExportResult:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: heads}\n"
        f"repos:\n  - name: gitops\n    url: {sample_tree / 'gitops'}\n"
    )
    options = ExportOptions(
        output=tmp_path / "heads.airbundle",
        keys=(load_signing_key(signing_key.private, passphrase=None),),
    )
    result = export_bundle(load_spec(spec), options)
    assert result.manifest.repos[0].head == MAIN
    return result


def import_(bundle: Path, key: KeyPair, target: str, tmp_path: Path) -> ImportReport:
    policy = load_policy(load_trust([key.public]), 1)
    options = ImportOptions(policy=policy, git=target, state_dir=tmp_path / "state")
    return import_bundle(bundle, options)


def checked_out(url: str, dest: Path, home: Path) -> str:
    """What `git clone` checks out: the branch, or '' for nothing."""
    git("clone", "--quiet", url, dest, home=home)
    proc = subprocess.run(
        ["git", "-C", str(dest), "symbolic-ref", "--short", "HEAD"],
        capture_output=True,
        text=True,
        env=_env(home),
        check=False,
    )
    has_files = any(p.name != ".git" for p in dest.iterdir())
    return proc.stdout.strip() if has_files else ""


def test_a_bare_folder_made_with_head_at_master_gets_the_carried_head(
    bundle: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    folder = tmp_path / "git"
    repo = master_headed(folder, "gitops.git")
    report = import_(bundle.path, signing_key, str(folder), tmp_path)
    assert report.notes == []
    assert git("-C", repo, "symbolic-ref", "HEAD", home=tmp_path).strip() == MAIN
    assert checked_out(str(repo), tmp_path / "clone", tmp_path) == "main"


def test_a_url_template_of_local_folders_gets_the_carried_head(
    bundle: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    folder = tmp_path / "srv"
    repo = master_headed(folder, "gitops.git")
    report = import_(bundle.path, signing_key, f"file://{folder}/{{name}}.git", tmp_path)
    assert report.notes == []
    assert git("-C", repo, "symbolic-ref", "HEAD", home=tmp_path).strip() == MAIN


def test_ssh_with_a_shell_gets_the_carried_head(
    git_ssh: GitSshServer,
    bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GIT_SSH_COMMAND", git_ssh.ssh_command)
    repo = master_headed(git_ssh.base_dir, "gitops.git")
    url = git_ssh.url("gitops.git")
    report = import_(bundle.path, signing_key, git_ssh.url("{name}.git"), tmp_path)
    assert report.notes == []
    assert git("-C", repo, "symbolic-ref", "HEAD", home=tmp_path).strip() == MAIN
    assert checked_out(url, tmp_path / "after", tmp_path) == "main"


@pytest.mark.parametrize("kind", ["git-daemon", "git-http"])
def test_servers_that_cannot_set_head_say_so_with_the_command_that_does(
    kind: str, request: pytest.FixtureRequest, bundle: ExportResult, signing_key: KeyPair,
    tmp_path: Path,
) -> None:  # fmt: skip
    server: GitDaemon | GitHttpServer = request.getfixturevalue(kind.replace("-", "_"))
    repo = master_headed(server.base_dir, "gitops.git")
    template = server.url("{name}.git")
    proc = subprocess.run(
        [*AIRBUNDLE, "import", str(bundle.path), "--trust", str(signing_key.public),
         "--git", template, "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "HEAD" in line)
    assert warning.startswith("airbundle: WARNING: repo 'gitops'")
    assert "names no branch it has, the bundle's is refs/heads/main" in warning
    assert "git:// and HTTP servers do not let a client set it" in warning
    match = re.search(r"`git --git-dir=(\S+) symbolic-ref HEAD refs/heads/main`", warning)
    assert match is not None, warning
    assert match.group(1) == "/gitops.git"  # as the URL names it, below the server's root
    url = server.url("gitops.git")
    assert checked_out(url, tmp_path / "before", tmp_path) == ""
    # The operator runs the command on the server, in the server's folder.
    subprocess.run(
        ["git", f"--git-dir={repo}", "symbolic-ref", "HEAD", "refs/heads/main"], check=True
    )
    assert checked_out(url, tmp_path / "after", tmp_path) == "main"


def test_a_second_import_says_nothing_once_head_is_right(
    git_daemon: GitDaemon, bundle: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    init_bare(git_daemon.base_dir, "gitops.git")  # made with HEAD at main
    report = import_(bundle.path, signing_key, git_daemon.url("{name}.git"), tmp_path)
    assert report.notes == []
    assert sys.executable  # the import ran in-process


def test_ssh_without_a_shell_says_so_with_the_command(
    git_ssh: GitSshServer,
    bundle: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An account restricted to git-shell takes pushes but no other command."""
    authorized = git_ssh.workdir / "authorized_keys"
    restrict = 'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",no-pty '
    authorized.write_text(restrict + authorized.read_text())
    monkeypatch.setenv("GIT_SSH_COMMAND", git_ssh.ssh_command)
    repo = master_headed(git_ssh.base_dir, "gitops.git")
    report = import_(bundle.path, signing_key, git_ssh.url("{name}.git"), tmp_path)
    (note,) = report.notes
    assert "the ssh account runs no shell commands" in note
    assert f"`git --git-dir={repo} symbolic-ref HEAD refs/heads/main`" in note
    assert git("-C", repo, "symbolic-ref", "HEAD", home=tmp_path).strip() == "refs/heads/master"
    assert git("-C", repo, "rev-parse", MAIN, home=tmp_path).strip()  # the push went through
