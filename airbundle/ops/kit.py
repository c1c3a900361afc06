"""airbundle carries itself: an offline installer for the disconnected side.

The kit is a folder of wheels (airbundle and every dependency, for the
target's Python and platform), a SHA256SUMS file signed with SSHSIG, and
INSTALL.txt. Standard tools check it before anything is installed:
`ssh-keygen -Y verify` on SHA256SUMS, then `sha256sum -c`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import airbundle
from airbundle.errors import SourceError, UsageError
from airbundle.format import sshsig

INSTALL = """\
airbundle offline installer
===========================

1. Check the kit with standard tools (a trusted key in allowed_signers):

     ssh-keygen -Y verify -f allowed_signers -I airbundle -n airbundle \\
         -s SHA256SUMS.sig < SHA256SUMS
     sha256sum -c SHA256SUMS

2. Install, with no network:

     python3 -m venv /opt/airbundle
     /opt/airbundle/bin/pip install --no-index --find-links . \\
         --require-hashes -r requirements.txt
     /opt/airbundle/bin/airbundle --version

Built for Python {python} on {platforms}.
"""


@dataclass(frozen=True)
class KitResult:
    folder: Path
    wheels: tuple[str, ...]


def _project_root() -> Path:
    root = Path(airbundle.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise UsageError(
            "airbundle kit builds airbundle's own wheel from its source tree, which this "
            "installation does not have",
            hint="run it from a checkout (pip install -e .)",
        )
    return root


def _requirements() -> list[str]:
    """Runtime dependencies as the source tree declares them (the installed
    metadata may be older than the checkout the wheel is built from)."""
    with (_project_root() / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "WARNING: Location" not in ln]
        raise SourceError(f"{what}: pip failed: {' '.join(lines[-5:])}")


def build_kit(
    output: Path,
    keys: tuple[Ed25519PrivateKey, ...],
    *,
    python_version: str | None = None,
    platforms: tuple[str, ...] = (),
    wheelhouse: Path | None = None,
) -> KitResult:
    if not keys:
        raise UsageError("the kit's checksums must be signed: give --key")
    if output.exists():
        raise UsageError(f"{output} exists; choose a new folder for the kit")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    index = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse is not None else []
    try:
        # Built in isolation: setuptools comes from the index, or the wheelhouse.
        _pip(
            ["wheel", "--quiet", "--no-deps", *index, "-w", str(work), str(_project_root())],
            "building the airbundle wheel",
        )
        args = ["download", "--quiet", "--only-binary=:all:", "--dest", str(work), *index]
        if python_version:
            args += ["--python-version", python_version]
        for platform in platforms:
            args += ["--platform", platform]
        _pip([*args, *_requirements()], "downloading dependency wheels")
        wheels = sorted(p.name for p in work.glob("*.whl"))
        sums = "".join(
            f"{hashlib.sha256((work / w).read_bytes()).hexdigest()}  {w}\n" for w in wheels
        )
        # pip installs exactly these files, whatever else lies in the folder:
        # --require-hashes refuses anything not listed here.
        digests = {w: hashlib.sha256((work / w).read_bytes()).hexdigest() for w in wheels}
        requirements = "".join(f"{_wheel_name(w)} --hash=sha256:{digests[w]}\n" for w in wheels)
        (work / "requirements.txt").write_text(requirements)
        sums += f"{hashlib.sha256(requirements.encode()).hexdigest()}  requirements.txt\n"
        (work / "SHA256SUMS").write_text(sums)
        (work / "SHA256SUMS.sig").write_bytes(
            b"".join(sshsig.sign(sums.encode(), key) for key in keys)
        )
        (work / "INSTALL.txt").write_text(
            INSTALL.format(
                python=python_version or ".".join(map(str, sys.version_info[:2])),
                platforms=", ".join(platforms) or "this machine's platform",
            )
        )
        work.replace(output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return KitResult(output, tuple(wheels))


_VERSION = re.compile(r"\d+\.\d+")


def _wheel_name(filename: str) -> str:
    """name==version from a wheel file name (PEP 427)."""
    name, version = filename.split("-")[:2]
    return f"{name}=={version}"


def check_python_version(text: str) -> str:
    if not _VERSION.fullmatch(text):
        raise UsageError(f"--python-version {text!r}: expected MAJOR.MINOR, e.g. 3.11")
    return text
