"""Key files: generate, load, and read trust files from disk."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.fsutil import read_regular, write_atomic
from airbundle.errors import KeyFileError, UsageError
from airbundle.format import sshsig
from airbundle.format.trust import TrustedKey, parse_trust_file
from airbundle.limits import DEFAULT_LIMITS

PASSPHRASE_ENV = "AIRBUNDLE_PASSPHRASE"


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """From --passphrase-file (first line) or $AIRBUNDLE_PASSPHRASE; None if neither."""
    if passphrase_file is not None:
        text = read_regular(
            passphrase_file,
            limit=DEFAULT_LIMITS.max_key_file_bytes,
            what="passphrase file",
            error=KeyFileError,
        )
        return text.splitlines()[0] if text.strip() else None
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


def generate_key(
    path: Path, *, passphrase: bytes | None, comment: str, force: bool = False
) -> sshsig.PublicKey:
    pub_path = path.with_name(path.name + ".pub")
    if not force and (path.exists() or pub_path.exists()):
        raise UsageError(f"{path} or {pub_path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    data = sshsig.serialize_private_key(key, passphrase=passphrase)
    public = sshsig.public_key_of(key, comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600)
    path.chmod(0o600)  # whatever an existing file had (--force)
    write_atomic(pub_path, (public.openssh_line() + "\n").encode())
    pub_path.chmod(0o644)
    return public


def load_signing_key(path: Path, *, passphrase: bytes | None) -> Ed25519PrivateKey:
    data = read_regular(
        path, limit=DEFAULT_LIMITS.max_key_file_bytes, what="key", error=KeyFileError
    )
    return sshsig.load_private_key(data, passphrase=passphrase, source=str(path))


def load_trust(paths: list[Path]) -> list[TrustedKey]:
    keys: list[TrustedKey] = []
    for path in paths:
        data = read_regular(
            path, limit=DEFAULT_LIMITS.max_trust_file_bytes, what="trust file", error=KeyFileError
        )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KeyFileError(f"cannot read trust file {path}: {exc}") from None
        found = parse_trust_file(text, source=str(path))
        if not found:
            raise KeyFileError(f"trust file {path} holds no keys")
        keys.extend(found)
    return keys
