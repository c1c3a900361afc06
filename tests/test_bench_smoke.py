"""The benchmark harness must not rot: run it end to end at its tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.env import REPO_ROOT, require_tool

EXPECTED_ROWS = {
    ("export", "export", "single"),
    ("verify", "verify", "single"),
    ("import", "import", "single"),
    ("export", "export", "shared"),
    ("verify", "verify", "shared"),
    ("import", "import", "shared"),
    ("small-images", "export", "small"),
    ("small-images", "import", "small"),
    ("git", "export", "git"),
    ("git", "import", "git"),
}


@pytest.mark.slow
@pytest.mark.integration  # bench starts registries and git daemons (a subprocess)
def test_bench_tiny_runs_every_step_on_both_sides(tmp_path: Path) -> None:
    for tool in ("skopeo", "docker-registry", "git", "zstd", "tar"):
        require_tool(tool)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench", "--size", "tiny", "--reps", "1", "--out", str(out)]
    argv += ["--cache", str(tmp_path / "cache")]
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    doc = json.loads((out / "results.json").read_text())
    rows = {(r["group"], r["step"], r["dataset"]): r for r in doc["rows"]}
    assert set(rows) == EXPECTED_ROWS
    for key, row in rows.items():
        for side in ("airbundle", "peer"):
            result = row[side]
            assert len(result["times_s"]) == 1, (key, side)
            assert all(t > 0 for t in result["times_s"]), (key, side)
            assert result["median_s"] > 0, (key, side)
            assert result["peak_rss_mib"] > 0, (key, side)
        assert row["ratio"] > 0, key
    sizes = {s["dataset"]: s for s in doc["bundle_sizes"]}
    assert set(sizes) == {"single", "shared", "small", "git"}
    assert all(s["airbundle_bytes"] > 0 and s["peer_bytes"] > 0 for s in sizes.values())
    assert {t["target"] for t in doc["targets"]}, "no target was judged"
    assert (out / "results.md").read_text().startswith("# airbundle benchmark")
