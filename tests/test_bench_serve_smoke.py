"""bench.serve must not rot: a tiny run measures every row on both sides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool


@pytest.mark.slow
def test_bench_serve_tiny_measures_both_servers(tmp_path: Path) -> None:
    for tool in ("skopeo", "docker-registry", "wrk"):
        require_tool(tool)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.serve", "--size", "4", "--clients", "2"]
    argv += ["--seconds", "1", "--reps", "1", "--out", str(out)]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())
    for side in ("serve", "docker-registry"):
        medians = doc["median"][side]
        assert set(medians) == {"startup_s", "pull_s", "rps", "p50_ms", "p99_ms", "rss_mib"}
        assert all(v > 0 for v in medians.values()), (side, medians)
    assert "| 2 clients pulling 4 MiB (s) |" in (out / "results.md").read_text()
