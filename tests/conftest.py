"""Shared fixtures. Servers (registries, git daemons) are real processes on loopback."""

from __future__ import annotations

import shutil

import pytest

INSTALL_HINTS = {
    "git": "apt-get install git",
    "skopeo": "apt-get install skopeo",
    "ssh-keygen": "apt-get install openssh-client",
    "zstd": "apt-get install zstd",
    "tar": "apt-get install tar",
    "docker-registry": "apt-get install docker-registry",
    "nginx": "apt-get install nginx-light",
    "fcgiwrap": "apt-get install fcgiwrap",
    "htpasswd": "apt-get install apache2-utils",
    "unshare": "apt-get install util-linux",
    "ip": "apt-get install iproute2",
}


def require_tool(name: str) -> str:
    """Path of a tool the test needs; fail (never skip) with the install hint."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINTS.get(name, 'install it')}", pytrace=False)
    return path


# --- sample content and keys ------------------------------------------------

import shutil as _shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of samples/ (layouts, archive, generated gitops repo, spec)."""
    require_tool("git")
    out = tmp_path_factory.mktemp("samples")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "samples" / "make_samples.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    _shutil.copy(REPO_ROOT / "samples" / "spec.yaml", out / "spec.yaml")
    return out


def make_key(folder: Path, name: str = "key") -> KeyPair:
    from airbundle.ops.keys import generate_key

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    generate_key(path, passphrase=None, comment=name)
    return KeyPair(path, path.with_name(name + ".pub"))


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("keys"), "release")
