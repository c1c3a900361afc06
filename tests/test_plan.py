"""plan resolves and pins; export --lock carries exactly what was planned even
after tags and branches moved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airbundle.errors import EXIT_USAGE, SourceError, UsageError
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.plan import apply_lock, make_plan, read_lock
from airbundle.ops.specfile import load_spec
from support.env import AIRBUNDLE
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import push_oci_layout

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
}


def test_lock_pins_digests_and_commits_after_they_move(
    registry: Registry,
    hello_layout: Path,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:stable")
    work = tmp_path / "w"
    shutil.copytree(sample_tree / "gitops", work / "gitops", symlinks=True)
    spec = work / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: p}\n"
        f"images:\n  - ref: {registry.host}/team/hello:stable\n"
        "repos:\n  - name: gitops\n    url: gitops\n    refs: [refs/heads/main]\n"
    )
    plan = make_plan(load_spec(spec), split_size=10_000)
    (image,) = plan.images
    assert image.size == image.total > 0 and plan.volumes is not None and plan.volumes >= 1
    lock = tmp_path / "spec.lock"
    lock.write_bytes(plan.lock_bytes())
    planned_main = plan.repos[0].refs["refs/heads/main"]

    # Both move after the plan.
    push_oci_layout(registry, hello_layout, "0.9", "team/hello:stable", all_platforms=False)
    subprocess.run(
        ["git", "-C", str(work / "gitops"), "commit", "-q", "--allow-empty", "-m", "later"],
        check=True,
        env=GIT_ENV,
    )

    locked = apply_lock(load_spec(spec), read_lock(lock))
    key = (load_signing_key(signing_key.private, passphrase=None),)
    result = export_bundle(locked, ExportOptions(output=tmp_path / "b.airbundle", keys=key))
    assert str(result.manifest.images[0].digest) == image.digest
    assert str(result.manifest.images[0].ref) == f"{registry.host}/team/hello:stable"
    assert {r.name: r.target for r in result.manifest.repos[0].refs} == {
        "refs/heads/main": planned_main
    }
    doc = json.loads(lock.read_text())
    assert doc["kind"] == "BundleLock"


def test_a_local_source_that_changed_since_the_plan_is_refused(
    sample_tree: Path, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    shutil.copytree(sample_tree, work, symlinks=True)
    spec = work / "spec.yaml"
    plan = make_plan(load_spec(spec))
    lock = tmp_path / "lock"
    lock.write_bytes(
        plan.lock_bytes().replace(plan.images[0].digest.encode(), b"sha256:" + b"0" * 64)
    )
    with pytest.raises(SourceError, match="the lock file pins sha256:0000"):
        _export(work, lock, tmp_path)
    assert not (tmp_path / "x.airbundle").exists()


def _export(work: Path, lock: Path, tmp_path: Path) -> None:
    from airbundle.ops.keys import generate_key

    generate_key(tmp_path / "k", passphrase=None, comment="k")
    key = (load_signing_key(tmp_path / "k", passphrase=None),)
    export_bundle(
        apply_lock(load_spec(work / "spec.yaml"), read_lock(lock)),
        ExportOptions(output=tmp_path / "x.airbundle", keys=key),
    )


def test_a_locked_platform_subset_exports(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: p}\n"
        f"images:\n  - ref: {registry.host}/team/hello:1.0\n"
        "    platforms: [linux/arm64]\n"
    )
    plan = make_plan(load_spec(spec))
    lock = tmp_path / "lock"
    lock.write_bytes(plan.lock_bytes())
    key = (load_signing_key(signing_key.private, passphrase=None),)
    result = export_bundle(
        apply_lock(load_spec(spec), read_lock(lock)),
        ExportOptions(output=tmp_path / "b.airbundle", keys=key),
    )
    (image,) = result.manifest.images
    assert str(image.source_digest) == plan.images[0].digest
    assert image.platforms == ("linux/arm64",)
    # plan said what the bundle carries for the subset, and why, once: the
    # export of the reviewed (locked) spec does not repeat it.
    assert plan.images[0].subset_digest == str(image.digest) != plan.images[0].digest
    assert [n for n in plan.notes if "travels as it is (sparse)" in n]
    assert not [w for w in result.warnings if "travels as it is (sparse)" in w]
    unlocked = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "c.airbundle", keys=key)
    )
    assert [w for w in unlocked.warnings if "travels as it is (sparse)" in w]


def test_export_refuses_an_output_folder_that_does_not_exist(
    hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: p}\n"
        f"images:\n  - ref: oci:{hello_layout}:0.9\n"
    )
    out = tmp_path / "typo" / "deeper" / "b.airbundle"
    proc = subprocess.run(
        [*AIRBUNDLE, "export", str(spec), "-o", str(out), "--key", str(signing_key.private)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert f"{out.parent} is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "typo").exists()


def test_plan_estimates_the_whole_bundle_git_history_included(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:stable")
    repo = tmp_path / "w" / "history"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=GIT_ENV)
    for i in range(4):  # 2 MiB of history that no compressor shrinks
        (repo / f"data{i}.bin").write_bytes(os.urandom(512 * 1024))
        subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=GIT_ENV)
        subprocess.run(
            ["git", "-C", str(repo), "commit", "-q", "-m", f"c{i}"], check=True, env=GIT_ENV
        )
    spec = tmp_path / "w" / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: p}\n"
        f"images:\n  - ref: {registry.host}/team/hello:stable\n"
        "repos:\n  - name: history\n    url: history\n"
    )
    key = (load_signing_key(signing_key.private, passphrase=None),)
    actual = (
        export_bundle(load_spec(spec), ExportOptions(output=tmp_path / "b.airbundle", keys=key))
        .path.stat()
        .st_size
    )
    split = int(actual * 0.4)  # the bundle fills 2.5 volumes: 3, with room either way

    plan = make_plan(load_spec(spec), split_size=split, cache_dir=tmp_path / "cache")

    (history,) = plan.repos
    assert history.size >= 2 * 1024 * 1024
    assert abs(plan.bundle_bytes - actual) <= 0.05 * actual, (plan.bundle_bytes, actual)
    assert plan.volumes == 3
    # The plan filled the export's git cache: the mirror is there for the export.
    assert list((tmp_path / "cache" / "git").glob("*-history.git"))


@pytest.mark.parametrize(
    ("referrers", "message"),
    [
        ([{"digest": "sha256:" + "a" * 64, "tag": "1.0"}], "is not sha256-HEX"),
        (
            [
                {"digest": "sha256:" + "a" * 64, "tag": None},
                {"digest": "sha256:" + "a" * 64, "tag": "sha256-" + "b" * 64},
            ],
            "listed twice",
        ),
        ([{"digest": "sha1:abc", "tag": None}], "malformed"),
    ],
    ids=["image-tag", "duplicate", "bad-digest"],
)
def test_an_edited_lock_cannot_retag_or_repeat_referrers(
    referrers: list[dict[str, object]], message: str, tmp_path: Path
) -> None:
    lock = tmp_path / "spec.lock"
    image = {"spec": "r/x:1", "ref": "r/x:1", "digest": "sha256:" + "c" * 64}
    doc = {"kind": "BundleLock", "images": [{**image, "referrers": referrers}], "repos": []}
    lock.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=message):
        read_lock(lock)
