"""bench.serve must not rot: a tiny run measures every row on both sides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.env import REPO_ROOT, require_tool


@pytest.mark.slow
@pytest.mark.integration  # bench.serve starts servers (a subprocess)
def test_bench_serve_tiny_measures_every_server_and_the_big_bundle(tmp_path: Path) -> None:
    for tool in ("skopeo", "docker-registry", "wrk"):
        require_tool(tool)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.serve", "--size", "4", "--clients", "2"]
    argv += ["--seconds", "1", "--reps", "1", "--big-mib", "8", "--out", str(out)]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())
    for side in ("serve", "serve-bundle", "docker-registry"):
        medians = doc["median"][side]
        assert set(medians) == {"startup_s", "pull_s", "rps", "p50_ms", "p99_ms", "rss_mib"}
        assert all(v > 0 for v in medians.values()), (side, medians)
    big = doc["big"]["median"]
    assert set(big) == {"startup_s", "manifest_s", "layer_byte_s"}
    assert 0 < big["startup_s"] <= big["manifest_s"] <= big["layer_byte_s"]
    table = (out / "results.md").read_text()
    assert "| 2 clients pulling 4 MiB (s) |" in table
    assert "| spawn to first byte of a 1 MiB layer (hashed first) |" in table
