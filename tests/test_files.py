"""Plain files carried and landed: by path (a file, a folder) and by URL from a
loopback HTTP server, pinned by sha256; `import --files DIR` judged by
coreutils' `sha256sum -c` against the signed manifest's digests; re-runs,
changed content, links planted in the folder, incremental bundles; the
format version rule (2 exactly when a bundle carries files); serve /files/."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from airbundle.errors import (
    ArchiveError,
    ManifestError,
    PinMismatchError,
    SpecError,
    TargetError,
)
from airbundle.format.archive import HEADER_SIZE
from airbundle.format.files import sha256sums
from airbundle.ops.inventory import take_inventory
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.sign import sign_bundle
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy, verify_bundle
from support.bundles import export, spec_with
from support.bundles import import_with_state as import_
from support.charts import StaticHttp, sha256
from support.env import AIRBUNDLE, require_tool
from support.keys import KeyPair, make_key
from support.serve import Serve


def spec_file(folder: Path, body: str, name: str = "files") -> Path:
    return spec_with(folder, body, name)


def sha256sum_check(folder: Path, sums: bytes) -> str:
    """coreutils' verdict on the folder against a SHA256SUMS text."""
    proc = subprocess.run(
        [require_tool("sha256sum"), "--check", "--strict", "-"],
        input=sums,
        cwd=folder,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return proc.stdout.decode()


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "tools" / "bin").mkdir(parents=True)
    (src / "tools" / "bin" / "kubectl").write_bytes(b"#!/bin/sh\necho kubectl\n")
    (src / "tools" / "bin" / "kubectl").chmod(0o755)
    (src / "tools" / "README").write_text("tools\n")
    (src / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (src / "web").mkdir()
    (src / "web" / "tool.tar.gz").write_bytes(os.urandom(3000))
    return src


@pytest.mark.integration
def test_files_by_path_and_by_url_land_verified(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    download = (sources / "web" / "tool.tar.gz").read_bytes()
    with StaticHttp(sources / "web") as web:
        spec = spec_file(
            sources,
            "files:\n  - path: tools\n  - path: ca.pem\n    name: pki/ca.pem\n"
            f"  - url: {web.url}/tool.tar.gz\n    sha256: {sha256(download)}\n"
            "    name: dl/tool.tar.gz\n",
        )
        result = export(spec, tmp_path / "f.airbundle", signing_key)
        assert web.paths == ["/tool.tar.gz"]
    manifest = result.manifest
    assert sorted(f.name for f in manifest.files) == [
        "dl/tool.tar.gz",
        "pki/ca.pem",
        "tools/README",
        "tools/bin/kubectl",
    ]
    assert {f.name: f.executable for f in manifest.files}["tools/bin/kubectl"]
    # Files are members of their own, with size and sha256 in the signed manifest.
    members = manifest.member_index
    for f in manifest.files:
        assert (members[f.member].size, members[f.member].digest) == (f.size, f.digest)
    verify_bundle(result.path, load_policy(load_trust([signing_key.public]), 1))
    far = tmp_path / "far" / "files"
    report = import_(result.path, signing_key, tmp_path, files=far)
    assert all(f["written"] for f in report.files)
    # Judge: coreutils against the digests of the signed manifest.
    out = sha256sum_check(far, sha256sums(manifest.files))
    assert out.count(": OK") == 4
    assert (far / "dl" / "tool.tar.gz").read_bytes() == download
    assert os.access(far / "tools" / "bin" / "kubectl", os.X_OK)
    assert not os.access(far / "pki" / "ca.pem", os.X_OK)
    assert not [p for p in far.rglob("*") if p.name.startswith(".airbundle-tmp-")]


def test_a_rerun_changes_nothing_and_changed_content_is_replaced_atomically(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = spec_file(sources, "files:\n  - path: tools\n")
    first = export(spec, tmp_path / "w1.airbundle", signing_key)
    far = tmp_path / "far"
    import_(first.path, signing_key, tmp_path, files=far)
    kubectl, readme = far / "tools" / "bin" / "kubectl", far / "tools" / "README"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (kubectl, readme)}
    # The same bundle again into another state: nothing to write, nothing touched.
    report = import_(first.path, signing_key, tmp_path / "other", files=far)
    assert not any(f["written"] for f in report.files)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (kubectl, readme)} == before
    # A new kubectl upstream: the next bundle replaces it by rename (a new inode;
    # a reader holding the old file keeps reading the old bytes).
    (sources / "tools" / "bin" / "kubectl").write_bytes(b"#!/bin/sh\necho kubectl 2\n")
    second = export(spec, tmp_path / "w2.airbundle", signing_key)
    with kubectl.open("rb") as held:
        report = import_(second.path, signing_key, tmp_path, files=far)
        assert held.read() == b"#!/bin/sh\necho kubectl\n"
    assert {f["name"]: f["written"] for f in report.files} == {
        "tools/bin/kubectl": True,
        "tools/README": False,
    }
    assert kubectl.read_bytes() == b"#!/bin/sh\necho kubectl 2\n"
    assert kubectl.stat().st_ino != before[kubectl][0]
    assert (readme.stat().st_ino, readme.stat().st_mtime_ns) == before[readme]
    sha256sum_check(far, sha256sums(second.manifest.files))


def test_a_link_planted_in_the_files_folder_is_not_followed(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = spec_file(sources, "files:\n  - path: tools\n")
    result = export(spec, tmp_path / "f.airbundle", signing_key)
    far = tmp_path / "far"
    far.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (far / "tools").symlink_to(outside)
    with pytest.raises(TargetError, match="is a link or a file"):
        import_(result.path, signing_key, tmp_path, files=far)
    assert list(outside.iterdir()) == []


def test_file_names_that_would_leave_the_folder_are_refused(tmp_path: Path) -> None:
    for name in ("../escape", "/etc/x", "a/../../b", "a//b", ".airbundle-tmp-x"):
        spec = spec_file(tmp_path, f"files:\n  - path: x\n    name: '{name}'\n")
        with pytest.raises(SpecError, match="name"):
            load_spec(spec)


@pytest.mark.integration
def test_a_wrong_sha256_pin_fails_the_export_and_writes_nothing(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    with StaticHttp(sources / "web") as web:
        spec = spec_file(
            sources, f"files:\n  - url: {web.url}/tool.tar.gz\n    sha256: sha256:{'0' * 64}\n"
        )
        out = tmp_path / "out" / "p.airbundle"
        out.parent.mkdir()
        out.parent.mkdir(exist_ok=True)
        proc = subprocess.run(
            [*AIRBUNDLE, "export", str(spec), "-o", str(out), "--key", str(signing_key.private)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 3, proc.stderr
        assert "sha256 pin says sha256:000" in proc.stderr and "Traceback" not in proc.stderr
        assert not out.parent.exists() or not list(out.parent.iterdir())
        with pytest.raises(PinMismatchError):
            export(spec, out, signing_key)


def test_an_incremental_bundle_leaves_out_files_the_far_side_holds(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = spec_file(sources, "files:\n  - path: tools\n  - path: ca.pem\n")
    first = export(spec, tmp_path / "w1.airbundle", signing_key)
    far = tmp_path / "far"
    import_(first.path, signing_key, tmp_path, files=far)
    inventory = take_inventory(registry=None, git_target=None, repo_names=[], files=far)
    (tmp_path / "inv.json").write_bytes(inventory.to_bytes())
    (sources / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnew\n")
    # A file that moved is found under its old name and copied, not carried.
    (sources / "tools" / "README").rename(sources / "tools" / "README.md")
    second = export(spec, tmp_path / "w2.airbundle", signing_key, since=(tmp_path / "inv.json",))
    carried = [m.path for m in second.manifest.members if m.path.startswith("files/")]
    assert carried == ["files/ca.pem"]
    assert sorted(f.name for f in second.manifest.files) == [
        "ca.pem",
        "tools/README.md",
        "tools/bin/kubectl",
    ]
    import_(second.path, signing_key, tmp_path, files=far)
    sha256sum_check(far, sha256sums(second.manifest.files))
    # Into an empty folder the same bundle is refused before anything is written.
    empty = tmp_path / "empty"
    with pytest.raises(TargetError, match="neither in the bundle nor in"):
        import_(second.path, signing_key, tmp_path, files=empty)
    assert [p for p in empty.rglob("*") if p.is_file()] == []


def test_the_format_version_is_2_exactly_when_a_bundle_carries_files(
    sources: Path, signing_key: KeyPair, tmp_path: Path, hello_layout: Path
) -> None:
    with_files = export(
        spec_file(sources, "files:\n  - path: ca.pem\n", "v2"),
        tmp_path / "v2.airbundle",
        signing_key,
    )
    without = export(
        spec_file(
            sources,
            f"images:\n  - ref: oci:{hello_layout}:1.0\n    name: example.com/hello:1.0\n",
            "v1",
        ),
        tmp_path / "v1.airbundle",
        signing_key,
    )

    def header_version(path: Path) -> int:
        return int(struct.unpack("<II10sHIQQ", path.read_bytes()[:HEADER_SIZE])[3])

    assert header_version(with_files.path) == 2 and with_files.manifest.format_version == 2
    assert header_version(without.path) == 1 and without.manifest.format_version == 1
    doc = json.loads(with_files.manifest.to_bytes())
    assert doc["formatVersion"] == 2
    # A header that claims version 1 for a bundle with files is refused.
    data = bytearray(with_files.path.read_bytes())
    data[18:20] = (1).to_bytes(2, "little")
    forged = tmp_path / "forged.airbundle"
    forged.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="format version 1"):
        verify_bundle(forged, load_policy(load_trust([signing_key.public]), 1))
    # And an unknown version is refused before anything else, as before.
    data[18:20] = (3).to_bytes(2, "little")
    forged.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="upgrade airbundle"):
        verify_bundle(forged, load_policy(load_trust([signing_key.public]), 1))
    # Co-signing rewrites the prefix only: the version stays 2, both signatures verify.
    reviewer = make_key(tmp_path / "keys", "review")
    sign_bundle(with_files.path, load_signing_key(reviewer.private, passphrase=None))
    assert header_version(with_files.path) == 2
    verify_bundle(
        with_files.path, load_policy(load_trust([signing_key.public, reviewer.public]), 2)
    )


@pytest.mark.integration
def test_serve_answers_the_files_at_files(
    sources: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = spec_file(sources, "files:\n  - path: tools\n")
    result = export(spec, tmp_path / "f.airbundle", signing_key)
    far = tmp_path / "far"
    import_(result.path, signing_key, tmp_path, files=far)
    (far / "tools" / "link").symlink_to(far / "tools" / "README")
    with Serve(["--files", str(far)], tmp_path / "serve") as serve:
        got = serve.get("/files/tools/bin/kubectl")
        assert got.status == 200 and got.body == b"#!/bin/sh\necho kubectl\n"
        assert (
            serve.get("/files/tools/").body.decode().splitlines() == ["README", "bin/", "link"][:2]
        )
        assert serve.get("/files/tools/link").status == 404  # a link is not served
        assert serve.get("/files/../files.yaml").status == 404
        ranged = serve.get("/files/tools/README", headers={"Range": "bytes=1-3"})
        assert (ranged.status, ranged.body) == (206, b"ool")


def test_the_manual_verification_script_checks_the_samples_with_a_chart_and_a_file(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    """docs/manual-verification.sh, without airbundle, on samples/spec-all.yaml:
    the chart is an image skopeo copies, the file a member sha256sum checks."""
    from support.env import REPO_ROOT

    for tool in ("zstd", "ssh-keygen", "skopeo", "git"):
        require_tool(tool)
    spec = sample_tree / "spec-all.yaml"
    spec.write_bytes((REPO_ROOT / "samples" / "spec-all.yaml").read_bytes())
    result = export(spec, tmp_path / "all.airbundle", signing_key)
    assert result.manifest.format_version == 2 and len(result.manifest.charts) == 1
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(REPO_ROOT / "docs" / "manual-verification.sh"),
            str(result.path),
            str(signing_key.public),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== image registry.example.com/charts/hello:0.1.0" in proc.stdout
    assert (out / "unpacked" / "files" / "docs" / "hello.txt").read_bytes() == (
        sample_tree / "files" / "hello.txt"
    ).read_bytes()


def test_inspect_and_diff_show_charts_and_files(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    """inspect lists the chart, the file and which chart asked for an image; diff
    names a chart version added and a file changed."""
    from support.env import REPO_ROOT

    tree = tmp_path / "samples"
    shutil.copytree(sample_tree, tree, symlinks=True)  # this test edits the chart
    spec = tree / "spec-all.yaml"
    spec.write_bytes((REPO_ROOT / "samples" / "spec-all.yaml").read_bytes())
    first = export(spec, tmp_path / "1.airbundle", signing_key)
    inspect = subprocess.run(
        [*AIRBUNDLE, "inspect", str(first.path)], capture_output=True, text=True, check=True
    ).stdout
    assert "charts (1):\n  hello 0.1.0  as registry.example.com/charts/hello:0.1.0" in inspect
    assert "files (1):\n  docs/hello.txt  sha256:" in inspect
    assert "(requested by chart registry.example.com/charts/hello:0.1.0)" in inspect
    doc = json.loads(
        subprocess.run(
            [*AIRBUNDLE, "inspect", "--json", str(first.path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert (doc["formatVersion"], [c["name"] for c in doc["charts"]]) == (2, ["hello"])
    # Next week: the chart moves to 0.2.0 and the file changes.
    chart = tree / "charts" / "hello" / "Chart.yaml"
    chart.write_text(chart.read_text().replace("version: 0.1.0", "version: 0.2.0"))
    (tree / "files" / "hello.txt").write_text("hello again\n")
    second = export(spec, tmp_path / "2.airbundle", signing_key)
    diff = subprocess.run(
        [*AIRBUNDLE, "diff", str(first.path), str(second.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "+ chart hello 0.2.0  registry.example.com/charts/hello:0.2.0" in diff
    assert "- chart hello 0.1.0  registry.example.com/charts/hello:0.1.0" in diff
    assert "~ file docs/hello.txt  sha256:e7df4247" in diff
