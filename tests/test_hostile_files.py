"""Files read from media or state are checked for type and size before a byte is
read (issue 11, item 4): a FIFO never hangs a command, a device is never read, a
huge file is never loaded. Every case fails cleanly: a named error, its exit code,
no traceback, nothing written, within the subprocess timeout and an address-space
cap well below the file's size."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.docker_archive import DockerArchiveSource
from airbundle.adapters.fsutil import read_optional, read_regular
from airbundle.adapters.layout_store import LayoutStore
from airbundle.adapters.registry.auth import lookup_credentials
from airbundle.errors import (
    EXIT_INTEGRITY,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    AuthError,
    SourceError,
    TargetError,
    UsageError,
)
from airbundle.format.digest import Digest
from airbundle.limits import DEFAULT_LIMITS
from airbundle.ops.serve import ServeOptions, load_users, read_history
from airbundle.ops.state import StateStore
from airbundle.ops.volumes import split_bundle
from support import cli
from support.crafting import World, content_start, snapshot, world
from support.env import AIRBUNDLE

GiB = 1 << 30
# Enough address space for the interpreter, its libraries and zstd; far less
# than the 1 GiB files below (a whole read of one would fail with MemoryError).
ADDRESS_SPACE = 900 * 1024 * 1024
TIMEOUT = 60


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(*args: object, cwd: Path | None = None, **environ: str) -> subprocess.CompletedProcess[str]:
    """The CLI under a memory cap; a hang ends the test at TIMEOUT (TimeoutExpired)."""
    env = {k: v for k, v in os.environ.items() if k != "AIRBUNDLE_PASSPHRASE"}
    env.update(environ)
    return subprocess.run(
        [*AIRBUNDLE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT,
        preexec_fn=_cap_memory,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """One `airbundle: error:` line with every fragment, the exit code, no
    traceback, and no memory exhausted under the cap."""
    assert "MemoryError" not in proc.stderr
    return cli.refused(proc, code, *fragments)


# --- hostile files ----------------------------------------------------------------


def fifo(path: Path) -> str:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return "is a FIFO, not a regular file"


def folder(path: Path) -> str:
    path.unlink(missing_ok=True)
    path.mkdir()
    return "is a folder, not a regular file"


def device(path: Path) -> str:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")
    return "is a character device, not a regular file"


def huge(path: Path) -> str:
    """A sparse 1 GiB file: costs no disk, but a whole read needs 1 GiB of memory."""
    with path.open("wb") as fh:
        fh.truncate(GiB)
    return "more than the"


HOSTILE: dict[str, Callable[[Path], str]] = {
    "fifo": fifo,
    "folder": folder,
    "device": device,
    "huge": huge,
}
KINDS = list(HOSTILE)


# --- the volume set ----------------------------------------------------------------


@pytest.fixture
def volumes(env: World, tmp_path: Path) -> Path:
    """A fresh volume set of the session bundle (three volumes)."""
    bundle = env.copy_bundle(tmp_path, "set.airbundle")
    head = content_start(bundle.read_bytes())
    size = head + (bundle.stat().st_size - head) // 2
    index = split_bundle(bundle, size, (env.key,), folder=tmp_path / "set")
    bundle.unlink()
    return index


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_volume_index_is_refused_before_it_is_read(
    env: World, volumes: Path, kind: str
) -> None:
    expected = HOSTILE[kind](volumes)
    for given in (volumes, volumes.parent, volumes.with_name("set.airbundle.001")):
        proc = run("verify", given, "--trust", env.pub_path)
        if kind == "folder" and given == volumes:  # a folder given is searched for an index
            refused(proc, EXIT_USAGE, "expected one *.volumes index in the folder, found 0")
        else:
            refused(proc, EXIT_INTEGRITY, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_volume_index_signatures_are_refused_before_they_are_read(
    env: World, volumes: Path, kind: str
) -> None:
    sig = volumes.with_name(volumes.name + ".sig")
    expected = HOSTILE[kind](sig)
    refused(run("verify", volumes, "--trust", env.pub_path), EXIT_INTEGRITY, "signatures", expected)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_volume_that_is_not_a_regular_file_is_refused(
    env: World, volumes: Path, tmp_path: Path, kind: str
) -> None:
    HOSTILE[kind](volumes.with_name(volumes.name.replace(".volumes", ".002")))
    target = tmp_path / "target"
    proc = run(
        "import", volumes, "--trust", env.pub_path, "--registry", f"oci:{target}",
        "--git", tmp_path / "git", "--state-dir", tmp_path / "state",
    )  # fmt: skip
    refused(proc, EXIT_INTEGRITY, ".002 is not a regular file")
    assert not target.exists() and not (tmp_path / "git").exists()
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_bundle_that_is_not_a_regular_file_is_refused(
    env: World, tmp_path: Path, kind: str
) -> None:
    bundle = tmp_path / "b.airbundle"
    expected = HOSTILE[kind](bundle)
    if kind == "folder":  # a folder names a volume set: it must hold one index
        expected = "expected one *.volumes index in the folder, found 0"
    for command in (["verify", bundle, "--trust", env.pub_path], ["inspect", bundle]):
        refused(run(*command), EXIT_USAGE, "bundle", expected)


# --- files of the import side: state, locks, trust, keys ---------------------------


def _import(env: World, tmp_path: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    return run(
        "import", env.bundle, "--trust", env.pub_path,
        "--registry", f"oci:{tmp_path / 'layout'}", "--git", tmp_path / "git",
        "--state-dir", tmp_path / "state", *extra,
    )  # fmt: skip


def _state_file(env: World, tmp_path: Path) -> Path:
    """The state file of the layout target, after a first import created it."""
    assert _import(env, tmp_path).returncode == EXIT_OK
    (state,) = [p for p in (tmp_path / "state").glob("target-*.json") if "images=" in p.read_text()]
    return state


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_state_file_is_refused(env: World, tmp_path: Path, kind: str) -> None:
    state = _state_file(env, tmp_path)
    expected = HOSTILE[kind](state)
    before = snapshot(tmp_path / "layout")
    refused(_import(env, tmp_path), EXIT_IO, "import state", expected)
    assert snapshot(tmp_path / "layout") == before


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_hostile_state_lock_is_refused(env: World, tmp_path: Path, kind: str) -> None:
    state = _state_file(env, tmp_path)
    lock = state.with_suffix(".lock")
    HOSTILE[kind](lock)
    expected = "Is a directory" if kind == "folder" else "not a regular file"
    refused(_import(env, tmp_path), EXIT_IO, "state lock", expected)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_hostile_layout_lock_is_refused(env: World, tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    HOSTILE[kind](layout / ".airbundle.lock")
    refused(_import(env, tmp_path), EXIT_IO, "layout lock", "not a regular file")
    assert sorted(p.name for p in layout.iterdir()) == [".airbundle.lock"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_layout_index_is_refused(env: World, tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    expected = HOSTILE[kind](layout / "index.json")
    refused(_import(env, tmp_path), EXIT_IO, "the layout's index", expected)
    assert not list((tmp_path / "state").glob("*.json"))


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_trust_key_and_passphrase_files_are_refused(
    env: World, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "file"
    expected = HOSTILE[kind](path)
    refused(run("verify", env.bundle, "--trust", path), EXIT_USAGE, "trust file", expected)
    bundle = env.copy_bundle(tmp_path)
    before = bundle.read_bytes()
    refused(run("sign", bundle, "--key", path), EXIT_USAGE, "key", expected)
    refused(
        run("sign", bundle, "--key", env.key_path, "--passphrase-file", path),
        EXIT_USAGE,
        "passphrase file",
        expected,
    )
    assert bundle.read_bytes() == before


# --- files of the export side: spec, lock, base; reports; scanned trees ------------


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_spec_lock_and_base_files_are_refused(
    env: World, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "out.airbundle"
    path = tmp_path / "hostile.json"
    expected = HOSTILE[kind](path)
    refused(run("export", path, "-o", out, "--key", env.key_path), EXIT_USAGE, "spec", expected)
    common = ["export", env.spec, "-o", out, "--key", env.key_path]
    refused(run(*common, "--lock", path), EXIT_USAGE, "lock file", expected)
    refused(run(*common, "--since", path), EXIT_USAGE, expected)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_import_report_is_refused(env: World, tmp_path: Path, kind: str) -> None:
    report = tmp_path / "report.json"
    expected = HOSTILE[kind](report)
    proc = run("mirror-config", report, "-o", tmp_path / "out")
    refused(proc, EXIT_USAGE, "report", expected)
    assert not (tmp_path / "out").exists()


def test_scan_skips_fifos_and_links_to_devices(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
        "spec:\n  containers:\n    - name: a\n      image: example.com/app:1\n"
    )
    fifo(tree / "fifo.yaml")
    device(tree / "zero.yaml")
    proc = run("scan", tree)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "example.com/app:1" in proc.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_registry_credentials_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "auth.json"
    expected = HOSTILE[kind](path)
    with pytest.raises(AuthError, match=expected):
        lookup_credentials("example.com", [path])


# --- the helper itself -------------------------------------------------------------


def test_read_regular_checks_the_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_regular(path, limit=11, what="test file", error=UsageError) == b"x" * 11
    with pytest.raises(UsageError, match=r"^test file .* is 11 bytes, more than the 10 allowed"):
        read_regular(path, limit=10, what="test file", error=UsageError)
    with pytest.raises(UsageError, match="No such file"):
        read_regular(tmp_path / "absent", limit=10, what="test file", error=UsageError)
    assert read_optional(tmp_path / "absent", limit=10, what="test file", error=UsageError) is None


def test_every_new_limit_lives_in_limits() -> None:
    for name in (
        "max_volume_index_bytes",
        "max_volume_signatures_bytes",
        "max_inventory_bytes",
        "max_state_bytes",
        "max_lock_bytes",
        "max_report_bytes",
        "max_trust_file_bytes",
        "max_key_file_bytes",
        "max_sign_journal_bytes",
    ):
        assert getattr(DEFAULT_LIMITS, name) > 0


# --- local files on the export side: the blob cache, docker archives ---------------


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_cache_entry_that_is_not_a_regular_file_is_not_used(tmp_path: Path, kind: str) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest = Digest.sha256_of(b"")  # size 0: a FIFO's size too
    cache.folder.mkdir(parents=True)
    HOSTILE[kind](cache.path(digest))
    assert cache.get(digest, 0) is None


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_docker_archive_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "saved.tar"
    expected = HOSTILE[kind](path)
    with pytest.raises(SourceError, match=expected):
        DockerArchiveSource(path, None, text="docker-archive:saved.tar").resolve()


# --- serve and split read the same kinds of files ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_serve_refuses_a_hostile_htpasswd_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "htpasswd"
    expected = HOSTILE[kind](path)
    with pytest.raises(UsageError, match=expected):
        load_users(path, DEFAULT_LIMITS)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_serve_refuses_a_hostile_layout_index(tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    expected = HOSTILE[kind](layout / "index.json")
    with pytest.raises(TargetError, match=expected):
        LayoutStore(layout, None).refresh()


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_serve_skips_a_hostile_state_file_with_a_warning(tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    (layout / ".airbundle").mkdir(parents=True)
    path = StateStore(layout / ".airbundle", f"images=oci:{layout.resolve()}").path
    HOSTILE[kind](path)
    history, warnings = read_history(ServeOptions(registry=f"oci:{layout}"))
    assert history == [] and len(warnings) == 1 and "import state" in warnings[0]


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_split_refuses_a_bundle_that_is_not_a_regular_file(
    env: World, tmp_path: Path, kind: str
) -> None:
    bundle = tmp_path / "b.airbundle"
    expected = HOSTILE[kind](bundle)
    proc = run("split", bundle, "--size", "1MiB", "--key", env.key_path)
    refused(proc, EXIT_USAGE, expected)


def test_log_lines_are_escaped() -> None:
    from airbundle.cli import _EscapingFormatter

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", ("GET /\x1b]0;x\x07",), None)
    assert _EscapingFormatter("%(message)s").format(record) == "GET /\\x1b]0;x\\x07"


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_image_policy_file_is_refused(tmp_path: Path, kind: str) -> None:
    from airbundle.errors import PolicyError
    from airbundle.ops.vetting import load_image_policy

    path = tmp_path / "policy.json"
    expected = HOSTILE[kind](path)
    with pytest.raises(PolicyError, match=expected):
        load_image_policy(path)
