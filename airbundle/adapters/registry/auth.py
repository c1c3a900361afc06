"""Registry credentials and the token dance.

Credentials come from the files users already have: $REGISTRY_AUTH_FILE, the
containers auth.json (podman/skopeo/buildah), and Docker's config.json,
including credential helpers (`credsStore`, `credHelpers`). Challenges follow
the distribution token spec: a 401 names Basic or Bearer (realm, service,
scope); Bearer tokens are fetched per scope and cached until they expire.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from airbundle.adapters.fsutil import read_optional
from airbundle.errors import AuthError
from airbundle.limits import DEFAULT_LIMITS

# The credential-helper protocol's one answer that is not an error: docker's
# client compares the helper's output with exactly this text
# (docker-credential-helpers, credentials.ErrCredentialsNotFound).
_HELPER_NOT_FOUND = "credentials not found in native keychain"

DOCKER_HUB_KEYS = (
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
)


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None  # OAuth2 refresh token (docker login with tokens)
    source: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."` (or Basic)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match.group(2) if match.group(2) is not None else (match.group(3) or "")
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return Challenge(scheme.lower(), params)


def _host_keys(host: str) -> list[str]:
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return list(DOCKER_HUB_KEYS)
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def _auth_files() -> list[Path]:
    files: list[Path] = []
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        files.append(Path(env))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    files.append(config_home / "containers" / "auth.json")
    docker_config = os.environ.get("DOCKER_CONFIG")
    files.append(
        Path(docker_config) / "config.json"
        if docker_config
        else Path.home() / ".docker" / "config.json"
    )
    return files


def _credential_helper(helper: str, host: str, source: str) -> Credentials | None:
    binary = shutil.which(f"docker-credential-{helper}")
    if binary is None:
        raise AuthError(
            f"{source} names credential helper {helper!r} for {host}, "
            f"but docker-credential-{helper} is not on PATH"
        )
    proc = subprocess.run(
        [binary, "get"], input=host.encode(), capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        message = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
        if message == _HELPER_NOT_FOUND:
            return None
        raise AuthError(f"docker-credential-{helper} failed for {host}: {message}")
    try:
        doc = json.loads(proc.stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            f"docker-credential-{helper} returned malformed output for {host}"
        ) from None
    if user == "<token>":
        return Credentials(identity_token=secret, source=f"docker-credential-{helper}")
    return Credentials(user, secret, source=f"docker-credential-{helper}")


def _from_entry(entry: object, source: str, host: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken")
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError(
                f"{source}: the auth entry for {host} is not base64 user:password"
            ) from None
        return Credentials(user, password, token if isinstance(token, str) else None, source)
    if entry.get("username"):
        return Credentials(
            entry.get("username"),
            entry.get("password"),
            token if isinstance(token, str) else None,
            source,
        )
    if isinstance(token, str):
        return Credentials(identity_token=token, source=source)
    return None


def lookup_credentials(host: str, files: Iterable[Path] | None = None) -> Credentials | None:
    """The first credentials found for `host`, in containers' then Docker's order."""
    for path in files if files is not None else _auth_files():
        data = read_optional(
            path,
            limit=DEFAULT_LIMITS.max_key_file_bytes,
            what="registry credentials",
            error=AuthError,
        )
        if data is None:
            continue
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise AuthError(f"cannot read registry credentials from {path}: {exc}") from None
        if not isinstance(doc, dict):
            continue
        helpers = doc.get("credHelpers") or {}
        for key in _host_keys(host):
            if isinstance(helpers, dict) and key in helpers:
                return _credential_helper(str(helpers[key]), host, str(path))
        auths = doc.get("auths") or {}
        for key in _host_keys(host):
            if isinstance(auths, dict) and key in auths:
                found = _from_entry(auths[key], str(path), host)
                if found:
                    return found
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            found = _credential_helper(store, host, str(path))
            if found:
                return found
    return None


@dataclass
class TokenCache:
    """Bearer tokens per (host, scope), dropped a little before they expire."""

    _tokens: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, host: str, scope: str) -> str | None:
        with self._lock:
            item = self._tokens.get((host, scope))
        if item and item[1] > time.monotonic():
            return item[0]
        return None

    def put(self, host: str, scope: str, token: str, expires_in: float) -> None:
        with self._lock:
            self._tokens[(host, scope)] = (token, time.monotonic() + max(expires_in - 30, 10))
