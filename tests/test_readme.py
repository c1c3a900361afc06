"""README.md says what the scripts do: the package list a new user reads is the
one scripts/install installs."""

from __future__ import annotations

import re

from support.env import REPO_ROOT


def _install_packages() -> set[str]:
    script = (REPO_ROOT / "scripts" / "install").read_text()
    found: set[str] = set()
    for body in re.findall(r"apt_packages\+?=\(([^)]*)\)", script):
        found.update(body.split())
    return found


def test_readme_lists_every_package_scripts_install_installs() -> None:
    packages = _install_packages()
    assert {"git", "skopeo", "docker-registry"} <= packages  # the parser found the lists
    readme = (REPO_ROOT / "README.md").read_text()
    listed = set(re.findall(r"`([a-z0-9][a-z0-9.+-]*)`", readme))
    assert packages - listed == set()


def test_readme_documents_every_exit_code_the_cli_uses() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for code in ("`0` ok", "`1` verification", "`2` usage", "`3` source", "`130` interrupted"):
        assert code in readme
