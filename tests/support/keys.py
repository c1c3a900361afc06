"""Signing keys for the tests: OpenSSH Ed25519 pairs made by airbundle itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airbundle.ops.keys import generate_key


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_key(folder: Path, name: str = "key") -> KeyPair:
    """A fresh unencrypted key pair ``folder/name`` and ``folder/name.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    generate_key(path, passphrase=None, comment=name)
    return KeyPair(path, path.with_name(name + ".pub"))
