"""The chart and file parts of the documents read back from disk (a lock, an
inventory, an import report) are checked against their schemas before use, like
the rest of those documents: a malformed part is refused naming its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airbundle.errors import ManifestError, UsageError
from airbundle.format.inventory import parse_inventory
from airbundle.ops.mirrors import charts_from_report
from airbundle.ops.plan import read_lock

DIGEST = "sha256:" + "a" * 64
LOCK: dict[str, Any] = {
    "apiVersion": "airbundle/v1",
    "kind": "BundleLock",
    "images": [],
    "repos": [],
}
INVENTORY: dict[str, Any] = {
    "apiVersion": "airbundle/v1",
    "kind": "Inventory",
    "blobs": [],
    "repos": {},
}
REPORT: dict[str, Any] = {"images": []}
CHART = {
    "spec": "podinfo",
    "ref": "example.com/podinfo:1.0.0",
    "version": "1.0.0",
    "digest": DIGEST,
}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"charts": 5}, "charts"),
        ({"charts": [{**CHART, "version": 1}]}, "charts[0].version"),
        ({"charts": [{**CHART, "version": ""}]}, "charts[0].version"),
        ({"charts": [{**CHART, "digest": "sha256:x"}]}, "charts[0].digest"),
        ({"charts": [{**CHART, "images": [{"ref": "x"}]}]}, "charts[0].images[0]"),
        ({"files": {"a": DIGEST}}, "files"),
        ({"files": [{"spec": "x", "files": {"a": 5}}]}, "files[0].files.a"),
        ({"files": [{"spec": "x"}]}, "files[0]"),
    ],
    ids=["charts-number", "version-number", "version-empty", "digest", "image-digest",
         "files-object", "file-digest", "files-missing"],
)  # fmt: skip
def test_a_lock_with_malformed_charts_or_files_is_refused_by_field(
    tmp_path: Path, extra: dict[str, Any], field: str
) -> None:
    path = _write(tmp_path, {**LOCK, **extra})
    with pytest.raises(UsageError) as info:
        read_lock(path)
    assert f"lock file {path} is malformed: field {field}" in info.value.message


def test_a_lock_with_good_charts_and_files_reads(tmp_path: Path) -> None:
    doc = {**LOCK, "charts": [CHART], "files": [{"spec": "x", "files": {"a": DIGEST}}]}
    lock = read_lock(_write(tmp_path, doc))
    assert lock.charts["podinfo"].version == "1.0.0"
    assert [(name, str(d)) for name, d in lock.files["x"]] == [("a", DIGEST)]


@pytest.mark.parametrize("files", [5, [5], ["sha256:x"], [{"digest": DIGEST}]])
def test_an_inventory_with_malformed_files_is_refused(files: object) -> None:
    data = json.dumps({**INVENTORY, "files": files}).encode()
    with pytest.raises(ManifestError) as info:
        parse_inventory(data, source="inv.json")
    assert "inventory inv.json is malformed: field files" in info.value.message


@pytest.mark.parametrize(
    "charts",
    [5, [5], [{"name": 1, "version": "1", "ref": "x"}], [{"name": "a", "version": "1"}]],
)
def test_an_import_report_with_malformed_charts_is_refused(tmp_path: Path, charts: object) -> None:
    path = _write(tmp_path, {**REPORT, "charts": charts})
    with pytest.raises(UsageError) as info:
        charts_from_report(path)
    assert f"import report {path} is malformed: field charts" in info.value.message
