"""Shared fixtures. Servers (registries, git daemons) are real processes on loopback."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import hypothesis
import pytest

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


# Every test runs the airbundle of the checkout under test, through the Python
# that runs pytest (this checkout's venv), never a stray install found on PATH.
AIRBUNDLE = [sys.executable, "-m", "airbundle"]


def _path_without_airbundle(path: str) -> str:
    """PATH minus every folder holding an `airbundle` executable: a test that
    runs the bare command fails here exactly as on a fresh machine."""
    folders = path.split(os.pathsep)
    keep = [d for d in folders if d and not os.access(os.path.join(d, "airbundle"), os.X_OK)]
    return os.pathsep.join(keep)


os.environ["PATH"] = _path_without_airbundle(os.environ.get("PATH", ""))

# hypothesis's per-example deadline is a timed assertion: on a shared 2-core
# machine it fails tests that are merely slow. Speed is measured in bench/.
hypothesis.settings.register_profile("airbundle", deadline=None)
hypothesis.settings.load_profile("airbundle")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """No silent skips: a skipped test is reported as a failure with its reason
    (a missing tool fails through require_tool with its install hint)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped tests are not allowed here: {reason}"


PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def hermetic(monkeypatch: pytest.MonkeyPatch, root: object, *, git: bool = False) -> None:
    """Point every place airbundle, skopeo and git look for credentials, config,
    caches and state into `root`, and drop proxies (and GIT_* with `git`)."""
    import os
    from pathlib import Path as _Path

    base = _Path(str(root))
    for var, sub in (
        ("HOME", "home"),
        ("DOCKER_CONFIG", "docker"),
        ("XDG_RUNTIME_DIR", "run"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
    ):
        (base / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(base / sub))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(base / "auth.json"))  # absent: no credentials
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    if git:
        for var in list(os.environ):
            if var.startswith("GIT_"):
                monkeypatch.delenv(var)


def require_tool(name: str) -> str:
    """Path of a tool the test needs; fail (never skip) with the install hint."""
    # Daemons live in /usr/sbin, which a non-root PATH may leave out.
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINTS.get(name, 'install it')}", pytrace=False)
    return path


# --- sample content and keys ------------------------------------------------

import shutil as _shutil  # noqa: E402
import subprocess  # noqa: E402
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


# --- real servers on loopback (implementation: tests/servers.py) -----------

from servers import (  # noqa: E402
    TEST_CREDS,
    GitDaemon,
    GitHttpServer,
    GitSshServer,
    RecordingProxy,
    Registry,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry (CNCF distribution) on 127.0.0.1: no auth, delete enabled."""
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def target_registry(tmp_path: Path) -> Iterator[Registry]:
    """A second, separate plain-HTTP registry: the import side."""
    with Registry(tmp_path / "target-registry") as reg:
        yield reg


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry requiring Basic auth (bcrypt htpasswd) for TEST_CREDS."""
    with Registry(tmp_path / "auth-registry", htpasswd=dict([TEST_CREDS])) as reg:
        yield reg


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    """An HTTPS registry; trust reg.ca_file (Python) or reg.cert_dir (skopeo --cert-dir)."""
    with Registry(tmp_path / "tls-registry", tls=True) as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry with Docker token auth; TEST_CREDS get every action they ask for,
    anonymous gets nothing; reg.token_requests records the flow."""
    with Registry(tmp_path / "token-registry", token_auth=True, htpasswd=dict([TEST_CREDS])) as reg:
        yield reg


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    """git daemon (push enabled) over tmp_path/git-daemon/repos; .init_bare(name), .url(name)."""
    with GitDaemon(tmp_path / "git-daemon" / "repos") as daemon:
        yield daemon


@pytest.fixture
def git_ssh(tmp_path: Path) -> Iterator[GitSshServer]:
    """sshd on loopback for git over ssh; .ssh_command is the GIT_SSH_COMMAND to use."""
    with GitSshServer(tmp_path / "git-ssh" / "repos") as server:
        yield server


@pytest.fixture
def git_http(tmp_path: Path) -> Iterator[GitHttpServer]:
    """Smart HTTP (nginx + fcgiwrap + git http-backend), push enabled, no auth."""
    with GitHttpServer(tmp_path / "git-http" / "repos") as server:
        yield server


@pytest.fixture
def git_http_auth(tmp_path: Path) -> Iterator[GitHttpServer]:
    """Smart HTTP requiring Basic auth for TEST_CREDS; .url(name, TEST_CREDS)."""
    with GitHttpServer(tmp_path / "git-http-auth" / "repos", htpasswd=dict([TEST_CREDS])) as server:
        yield server


@pytest.fixture
def recording_proxy() -> Iterator[RecordingProxy]:
    """An HTTP proxy (CONNECT + absolute URIs) forwarding only to loopback; .requests."""
    with RecordingProxy() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def hello_layout(sample_tree: Path) -> Path:
    """samples' OCI layout: tag 1.0 is a two-platform index, 0.9 one manifest."""
    return sample_tree / "layouts" / "hello"
