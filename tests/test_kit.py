"""airbundle carries itself: an offline installer, checked with standard tools and
installed inside a namespace with no route out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airbundle.errors import UsageError
from airbundle.ops.keys import load_signing_key
from airbundle.ops.kit import build_kit
from support.env import REPO_ROOT, require_tool
from support.keys import KeyPair
from support.netns import netns_run

WHEELHOUSE = REPO_ROOT / ".cache" / "wheelhouse"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, signing_key: KeyPair) -> Path:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELHOUSE}: run scripts/install --test", pytrace=False)
    out = tmp_path_factory.mktemp("kit") / "airbundle-kit"
    build_kit(out, (load_signing_key(signing_key.private, passphrase=None),), wheelhouse=WHEELHOUSE)
    return out


def test_kit_is_checked_with_ssh_keygen_and_sha256sum(
    kit: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    require_tool("ssh-keygen")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("airbundle " + signing_key.public.read_text())
    sums = (kit / "SHA256SUMS").read_bytes()
    subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(allowed),
            "-I",
            "airbundle",
            "-n",
            "airbundle",
            "-s",
            str(kit / "SHA256SUMS.sig"),
        ],
        input=sums,
        check=True,
        capture_output=True,
    )
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=kit, check=True)
    names = sums.decode()
    assert "airbundle-0.1.0-py3-none-any.whl" in names
    for dep in ("cryptography", "zstandard", "typer", "urllib3", "jsonschema"):
        assert dep in names
    assert "--require-hashes -r requirements.txt" in (kit / "INSTALL.txt").read_text()
    assert "requirements.txt" in names


@pytest.mark.integration
def test_kit_installs_with_no_network(kit: Path, tmp_path: Path) -> None:
    require_tool("unshare")
    script = (
        "set -e\n"
        f"{sys.executable} -m venv {tmp_path}/venv\n"
        f"cd {kit} && {tmp_path}/venv/bin/pip install -q --disable-pip-version-check "
        "--no-index --find-links . --require-hashes -r requirements.txt\n"
        f"{tmp_path}/venv/bin/airbundle --version\n"
    )
    proc = netns_run(["bash", "-c", script], timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("airbundle 0.1.0")


def test_kit_refuses_an_existing_folder(signing_key: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exists"):
        build_kit(tmp_path, (load_signing_key(signing_key.private, passphrase=None),))
