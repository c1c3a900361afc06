"""README's first command, `scripts/demo`, works on a checkout: set up, export
the samples, verify, import into ./airgap/, offline and without a server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.env import REPO_ROOT


def _checkout_copy(dest: Path) -> None:
    """The tracked files of this checkout (what a clone holds), plus this
    checkout's venv: scripts/install sees it installed from the same
    pyproject.toml and skips pip, so the test needs no package index."""
    files = subprocess.run(
        [
            "git",
            "-C",
            str(REPO_ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO_ROOT / os.fsdecode(name)
        if not source.is_file():
            continue  # deleted in the work tree but still in the index
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        target.chmod(source.stat().st_mode)
    (dest / ".venv").symlink_to(Path(sys.executable).parent.parent)


def _require_a_current_install() -> None:
    """The copy shares this checkout's venv: were it installed from another
    pyproject.toml, the demo would reinstall it, editable, from the temporary copy
    (leaving the venv pointing at a folder pytest deletes). Fail instead."""
    venv = Path(sys.executable).parent.parent
    want = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = venv / ".airbundle-installed"
    have = stamp.read_text().split()[0] if stamp.is_file() else "none"
    if have != want:
        pytest.fail(
            f"{venv} was not installed from this pyproject.toml: run scripts/install --test",
            pytrace=False,
        )


def test_demo_exports_verifies_and_imports_the_samples(tmp_path: Path) -> None:
    _require_a_current_install()
    checkout = tmp_path / "airbundle"
    _checkout_copy(checkout)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path / "home")}
    for _ in range(2):  # a re-run works too, and does not reinstall
        proc = subprocess.run(
            ["bash", "scripts/demo"], cwd=checkout, capture_output=True, text=True, env=env,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "installing airbundle" not in proc.stderr
    assert "OK demo/samples.airbundle" in proc.stdout
    assert (checkout / "airgap" / "images" / "index.json").is_file()
    refs = subprocess.run(
        ["git", "-C", str(checkout / "airgap" / "git" / "gitops.git"), "for-each-ref"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "refs/heads/main" in refs
    # The chart and the file went through as well.
    assert (checkout / "airgap" / "files" / "docs" / "hello.txt").read_bytes() == (
        checkout / "samples" / "files" / "hello.txt"
    ).read_bytes()
    index = (checkout / "airgap" / "charts" / "index.yaml").read_text()
    assert (
        "hello-0.1.0.tgz" in index
        and (checkout / "airgap" / "charts" / "hello-0.1.0.tgz").is_file()
    )
    assert (
        "registry.example.com/charts/hello:0.1.0"
        in (checkout / "airgap" / "images" / "index.json").read_text()
    )
    assert "./airgap/charts" in proc.stdout and "hello.txt" in proc.stdout
    # The closing hint suggests only what the demo installed.
    assert "skopeo" not in proc.stdout
