"""Where the tests run: the checkout, its CLI, the tools they need, and hermetic
environments (no user credentials, config, caches or proxies leak in)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent

# Every test runs the airbundle of the checkout under test, through the Python
# that runs pytest (this checkout's venv), never a stray install found on PATH.
AIRBUNDLE = [sys.executable, "-m", "airbundle"]

INSTALL_HINTS = {
    "git": "apt-get install git",
    "skopeo": "apt-get install skopeo",
    "ssh-keygen": "apt-get install openssh-client",
    "ssh": "apt-get install openssh-client",
    "sshd": "apt-get install openssh-server",
    "zstd": "apt-get install zstd",
    "tar": "apt-get install tar",
    "docker-registry": "apt-get install docker-registry",
    "nginx": "apt-get install nginx-light",
    "fcgiwrap": "apt-get install fcgiwrap",
    "htpasswd": "apt-get install apache2-utils",
    "unshare": "apt-get install util-linux",
    "ip": "apt-get install iproute2",
    "podman": "apt-get install podman",
    "containerd": "apt-get install containerd",
    "ctr": "apt-get install containerd",
    "chromium": "apt-get install chromium",
    "wrk": "apt-get install wrk",
}

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")

# Where hermetic environments point each variable, under their root folder.
HERMETIC_FOLDERS = (
    ("HOME", "home"),
    ("DOCKER_CONFIG", "docker"),
    ("XDG_RUNTIME_DIR", "run"),
    ("XDG_CONFIG_HOME", "config"),
    ("XDG_CACHE_HOME", "cache"),
    ("XDG_STATE_HOME", "state"),
)


def require_tool(name: str) -> str:
    """Path of a tool the test needs; fail (never skip) with the install hint."""
    # Daemons live in /usr/sbin, which a non-root PATH may leave out.
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINTS.get(name, 'install it')}", pytrace=False)
    return path


def path_without_airbundle(path: str) -> str:
    """PATH minus every folder holding an `airbundle` executable: a test that
    runs the bare command fails here exactly as on a fresh machine."""
    folders = path.split(os.pathsep)
    keep = [d for d in folders if d and not os.access(os.path.join(d, "airbundle"), os.X_OK)]
    return os.pathsep.join(keep)


def hermetic_env(root: Path) -> dict[str, str]:
    """Variables that point every credential, config, cache and state location of
    airbundle, skopeo and git into ``root`` (the folders are created)."""
    values = {}
    for var, sub in HERMETIC_FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        values[var] = str(root / sub)
    values["REGISTRY_AUTH_FILE"] = str(root / "auth.json")  # absent: no credentials
    return values


def hermetic(monkeypatch: pytest.MonkeyPatch, root: Path, *, git: bool = False) -> None:
    """Point every place airbundle, skopeo and git look for credentials, config,
    caches and state into `root`, and drop proxies (and GIT_* with `git`)."""
    for var, value in hermetic_env(root).items():
        monkeypatch.setenv(var, value)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    if git:
        for var in list(os.environ):
            if var.startswith("GIT_"):
                monkeypatch.delenv(var)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy settings (loopback traffic must go direct), plus extra."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    if extra:
        env.update(extra)
    return env


def git_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for git clients: no user/system config, fixed identity, no prompts."""
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    for key in list(env):
        if key.startswith("GIT_"):
            del env[key]
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_AUTHOR_NAME": "Airbundle Tests",
            "GIT_AUTHOR_EMAIL": "tests@airbundle.invalid",
            "GIT_COMMITTER_NAME": "Airbundle Tests",
            "GIT_COMMITTER_EMAIL": "tests@airbundle.invalid",
        }
    )
    if extra:
        env.update(extra)
    return env
