"""The suite's shared fixtures (loaded from tests/conftest.py through ``pytest_plugins``):
sample content and keys, and real servers on loopback, one fresh server per test.

Each server fixture is decorated with :func:`support.integration.starts_servers`,
so every test using it carries the ``integration`` marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.env import REPO_ROOT, require_tool
from support.git_daemon import GitDaemon
from support.git_http import GitHttpServer
from support.integration import starts_servers
from support.keys import KeyPair, make_key
from support.net import TEST_CREDS
from support.proxy import RecordingProxy
from support.registry import Registry
from support.sshd import GitSshServer

# --- the user's own folders stay untouched ---------------------------------


@pytest.fixture(scope="session", autouse=True)
def private_state_and_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """airbundle's default import state (XDG_STATE_HOME) and cache
    (XDG_CACHE_HOME) point into this session's temporary folder, for the tests
    and every command they start. Otherwise a test writes into the user's
    ~/.local/state, and a later session whose temporary target has the same
    path (a reused --basetemp) inherits its freshness record: a rollback."""
    root = tmp_path_factory.mktemp("xdg")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- sample content and keys ------------------------------------------------


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
    shutil.copy(REPO_ROOT / "samples" / "spec.yaml", out / "spec.yaml")
    return out


@pytest.fixture(scope="session")
def hello_layout(sample_tree: Path) -> Path:
    """samples' OCI layout: tag 1.0 is a two-platform index, 0.9 one manifest."""
    return sample_tree / "layouts" / "hello"


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


# --- real servers on loopback -------------------------------------------------


@pytest.fixture
@starts_servers
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry (CNCF distribution) on 127.0.0.1: no auth, delete enabled."""
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
@starts_servers
def target_registry(tmp_path: Path) -> Iterator[Registry]:
    """A second, separate plain-HTTP registry: the import side."""
    with Registry(tmp_path / "target-registry") as reg:
        yield reg


@pytest.fixture
@starts_servers
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry requiring Basic auth (bcrypt htpasswd) for TEST_CREDS."""
    with Registry(tmp_path / "auth-registry", htpasswd=dict([TEST_CREDS])) as reg:
        yield reg


@pytest.fixture
@starts_servers
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    """An HTTPS registry; trust reg.ca_file (Python) or reg.cert_dir (skopeo --cert-dir)."""
    with Registry(tmp_path / "tls-registry", tls=True) as reg:
        yield reg


@pytest.fixture
@starts_servers
def token_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry with Docker token auth; TEST_CREDS get every action they ask for,
    anonymous gets nothing; reg.token_requests records the flow."""
    with Registry(tmp_path / "token-registry", token_auth=True, htpasswd=dict([TEST_CREDS])) as reg:
        yield reg


@pytest.fixture
@starts_servers
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    """git daemon (push enabled) over tmp_path/git-daemon/repos; .init_bare(name), .url(name)."""
    with GitDaemon(tmp_path / "git-daemon" / "repos") as daemon:
        yield daemon


@pytest.fixture
@starts_servers
def git_ssh(tmp_path: Path) -> Iterator[GitSshServer]:
    """sshd on loopback for git over ssh; .ssh_command is the GIT_SSH_COMMAND to use."""
    with GitSshServer(tmp_path / "git-ssh" / "repos") as server:
        yield server


@pytest.fixture
@starts_servers
def git_http(tmp_path: Path) -> Iterator[GitHttpServer]:
    """Smart HTTP (nginx + fcgiwrap + git http-backend), push enabled, no auth."""
    with GitHttpServer(tmp_path / "git-http" / "repos") as server:
        yield server


@pytest.fixture
@starts_servers
def git_http_auth(tmp_path: Path) -> Iterator[GitHttpServer]:
    """Smart HTTP requiring Basic auth for TEST_CREDS; .url(name, TEST_CREDS)."""
    with GitHttpServer(tmp_path / "git-http-auth" / "repos", htpasswd=dict([TEST_CREDS])) as server:
        yield server


@pytest.fixture
@starts_servers
def recording_proxy() -> Iterator[RecordingProxy]:
    """An HTTP proxy (CONNECT + absolute URIs) forwarding only to loopback; .requests."""
    with RecordingProxy() as proxy:
        yield proxy
