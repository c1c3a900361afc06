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
}


def require_tool(name: str) -> str:
    """Path of a tool the test needs; fail (never skip) with the install hint."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINTS.get(name, 'install it')}", pytrace=False)
    return path
