"""The documented air-gap rehearsal script runs end to end (export from real
servers, import inside a network namespace with loopback only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.env import REPO_ROOT, require_tool


# The script starts its own servers and namespace: the guard cannot see them.
@pytest.mark.integration
def test_airgap_demo_script_crosses_a_simulated_gap(tmp_path: Path) -> None:
    for tool in ("docker-registry", "skopeo", "git", "unshare", "ip"):
        require_tool(tool)
    # The console script of the environment running the tests (this checkout's
    # venv), never whatever PATH finds.
    airbundle = Path(sys.executable).with_name("airbundle")
    assert airbundle.is_file(), f"{airbundle} missing: run scripts/install --test"
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "airgap-demo"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRBUNDLE": str(airbundle)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "probe: no route out of the namespace" in proc.stdout
    assert "refs/heads/main" in proc.stdout
    report = (tmp_path / "work" / "import-report.json").read_text()
    assert "team/hello:1.0" in report
    assert (tmp_path / "work" / "far" / "checkout" / ".git").is_dir()
    hello = "sha256:1d3cdc2a3476142a55266984489dbfc68cd13e92ccfe463a467adf3ae53c4604"
    assert f"index digest from serve: {hello}" in proc.stdout
    assert f"index digest from serve --bundle: {hello}" in proc.stdout
