"""Export -> verify -> import on the samples, judged by skopeo, git and ssh-keygen."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from airbundle.errors import RefUpdateError, TruncatedError
from airbundle.format.digest import Digest
from airbundle.ops.export import ExportResult
from airbundle.ops.importer import ImportReport
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import verify_bundle
from support.bundles import export, import_, signing_keys, trust_policy
from support.env import require_tool
from support.keys import KeyPair, make_key


def run(*args: str | Path, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, input=stdin, capture_output=True)
    assert proc.returncode == 0, f"{args} failed: {proc.stderr.decode()}"
    return proc.stdout.decode()


def importing(bundle: Path, key: KeyPair, root: Path, *, force: bool = False) -> ImportReport:
    """Import into ROOT/images (an OCI layout) and ROOT/git (bare repositories)."""
    return import_(
        bundle, key, registry=f"oci:{root / 'images'}", git=str(root / "git"), force=force
    )


@pytest.fixture(scope="module")
def exported(
    sample_tree: Path, signing_key: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    out = tmp_path_factory.mktemp("bundle") / "samples.airbundle"
    return export(sample_tree / "spec.yaml", out, signing_key)


def skopeo_digest(ref: str) -> str:
    raw = run("skopeo", "inspect", "--raw", ref).encode()
    return str(Digest.sha256_of(raw))


def test_verify_accepts_what_export_wrote(exported: ExportResult, signing_key: KeyPair) -> None:
    policy = trust_policy(signing_key.public)
    result = verify_bundle(exported.path, policy)
    assert result.members == len(exported.manifest.members) == 17
    assert result.authenticated.manifest_digest == exported.manifest_digest


def test_import_lands_images_and_repos_judged_by_skopeo_and_git(
    exported: ExportResult, signing_key: KeyPair, sample_tree: Path, tmp_path: Path
) -> None:
    require_tool("skopeo")
    importing(exported.path, signing_key, tmp_path)
    layout = tmp_path / "images"
    for image in exported.manifest.images:
        assert skopeo_digest(f"oci:{layout}:{image.ref}") == str(image.digest)
    # Multi-platform index: both platform manifests made it and copy works.
    run(
        "skopeo",
        "--override-arch",
        "arm64",
        "copy",
        "--insecure-policy",
        f"oci:{layout}:registry.example.com/team/hello:1.0",
        f"dir:{tmp_path / 'arm'}",
    )
    repo = tmp_path / "git" / "gitops.git"
    run("git", "-C", repo, "fsck", "--strict")
    source_refs = run(
        "git",
        "-C",
        sample_tree / "gitops",
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/heads",
        "refs/tags",
    )
    target_refs = run("git", "-C", repo, "for-each-ref", "--format=%(objectname) %(refname)")
    assert target_refs == source_refs
    assert run("git", "-C", repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    report = json.loads((layout / "airbundle-import.json").read_text())
    assert report["manifest_digest"] == str(exported.manifest_digest)


def test_reimport_is_a_noop(exported: ExportResult, signing_key: KeyPair, tmp_path: Path) -> None:
    first = importing(exported.path, signing_key, tmp_path)
    index = (tmp_path / "images" / "index.json").read_bytes()
    refs = run("git", "-C", tmp_path / "git" / "gitops.git", "for-each-ref")
    second = importing(exported.path, signing_key, tmp_path)
    assert first.blobs_written == 9 and first.blobs_present == 0
    # Same channel, sequence and manifest: recognised from the state, nothing is read.
    assert second.noop and second.blobs_written == 0
    assert (tmp_path / "images" / "index.json").read_bytes() == index
    assert run("git", "-C", tmp_path / "git" / "gitops.git", "for-each-ref") == refs


def test_truncated_bundle_imports_nothing(
    exported: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    data = exported.path.read_bytes()
    cut = tmp_path / "cut.airbundle"
    cut.write_bytes(data[: len(data) - 3000])
    with pytest.raises(TruncatedError, match=r"cut\.airbundle"):
        importing(cut, signing_key, tmp_path / "target")
    index = tmp_path / "target" / "images" / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []
    assert not (tmp_path / "target" / "git" / "gitops.git").exists()
    assert not list((tmp_path / "target").rglob(".airbundle-tmp-*"))


def test_interrupted_import_rerun_completes(
    exported: ExportResult,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airbundle.adapters.oci_layout import OciLayoutTarget

    real = OciLayoutTarget.write_blob
    calls = []

    def interrupted(self: OciLayoutTarget, *args: object) -> None:
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(OciLayoutTarget, "write_blob", interrupted)
    with pytest.raises(KeyboardInterrupt):
        importing(exported.path, signing_key, tmp_path / "target")
    monkeypatch.undo()
    # Blobs verified before the interrupt are there, each whole (with several
    # uploads in flight, how many of the five before it finished varies); no
    # tag, no repo, no temp file.
    index = json.loads((tmp_path / "target" / "images" / "index.json").read_text())
    assert index["manifests"] == []
    kept = list((tmp_path / "target/images/blobs/sha256").iterdir())
    assert 0 < len(kept) <= 5
    assert all(hashlib.sha256(b.read_bytes()).hexdigest() == b.name for b in kept)
    assert not (tmp_path / "target" / "git" / "gitops.git").exists()
    assert not list((tmp_path / "target").rglob(".airbundle-tmp-*"))
    importing(exported.path, signing_key, tmp_path / "target")
    importing(exported.path, signing_key, tmp_path / "clean")
    for name in ("images/index.json", "images/oci-layout"):
        assert (tmp_path / "target" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    blobs = sorted(p.name for p in (tmp_path / "target/images/blobs/sha256").iterdir())
    assert blobs == sorted(p.name for p in (tmp_path / "clean/images/blobs/sha256").iterdir())


def test_plain_tar_and_zstd_unpack_is_a_valid_layout_for_skopeo(
    exported: ExportResult, tmp_path: Path
) -> None:
    require_tool("skopeo")
    require_tool("zstd")
    run("tar", "--zstd", "-xf", exported.path, "-C", tmp_path)
    names = run("tar", "--zstd", "-tf", exported.path).split()
    assert names[:2] == ["airbundle/manifest.json", "airbundle/signatures/00.sig"]
    for image in exported.manifest.images:
        assert skopeo_digest(f"oci:{tmp_path / 'images'}:{image.ref}") == str(image.digest)
    run(
        "skopeo",
        "copy",
        "--insecure-policy",
        f"oci:{tmp_path / 'images'}:example.com/team/app:2.1",
        f"dir:{tmp_path / 'app'}",
    )
    # git can read the bundle on its own.
    run(
        "git",
        "clone",
        "--quiet",
        "--mirror",
        tmp_path / "repos" / "gitops.bundle",
        tmp_path / "clone.git",
    )
    run(
        "git",
        "-C",
        tmp_path / "clone.git",
        "bundle",
        "verify",
        tmp_path / "repos" / "gitops.bundle",
    )


def test_ssh_keygen_verifies_the_manifest_signature(
    exported: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    require_tool("ssh-keygen")
    run("tar", "--zstd", "-xf", exported.path, "-C", tmp_path)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("release@airbundle " + signing_key.public.read_text())
    manifest = (tmp_path / "airbundle" / "manifest.json").read_bytes()
    out = run(
        "ssh-keygen",
        "-Y",
        "verify",
        "-f",
        allowed,
        "-I",
        "release@airbundle",
        "-n",
        "airbundle",
        "-s",
        tmp_path / "airbundle" / "signatures" / "00.sig",
        stdin=manifest,
    )
    assert "Good" in out


def test_export_signed_with_ssh_keygen_key_and_allowed_signers(
    sample_tree: Path, tmp_path: Path
) -> None:
    require_tool("ssh-keygen")
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", tmp_path / "ops")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text('ops@example namespaces="airbundle" ' + (tmp_path / "ops.pub").read_text())
    key = KeyPair(tmp_path / "ops", allowed)
    result = export(sample_tree / "spec.yaml", tmp_path / "b.airbundle", key)
    verify_bundle(result.path, trust_policy(allowed))


def test_same_inputs_and_source_date_epoch_give_identical_bytes(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    a = export(
        sample_tree / "spec.yaml",
        tmp_path / "a.airbundle",
        signing_key,
        source_date_epoch=1_700_000_000,
    )
    b = export(
        sample_tree / "spec.yaml",
        tmp_path / "b.airbundle",
        signing_key,
        source_date_epoch=1_700_000_000,
    )
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.manifest.bundle.id == b.manifest.bundle.id


def test_non_fast_forward_is_refused_without_force(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(sample_tree, work, symlinks=True)
    first = export(work / "spec.yaml", tmp_path / "1.airbundle", signing_key, sequence=1)
    importing(first.path, signing_key, tmp_path / "target")
    # Rewrite history: main moves to a commit that does not descend from the old tip.
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    subprocess.run(
        ["git", "-C", str(work / "gitops"), "reset", "-q", "--hard", "HEAD~1"], check=True, env=env
    )
    subprocess.run(
        ["git", "-C", str(work / "gitops"), "commit", "-q", "--allow-empty", "-m", "rewritten"],
        check=True,
        env=env,
    )
    second = export(work / "spec.yaml", tmp_path / "2.airbundle", signing_key, sequence=2)
    repo = tmp_path / "target" / "git" / "gitops.git"
    before = run("git", "-C", repo, "for-each-ref")
    index_before = (tmp_path / "target" / "images" / "index.json").read_bytes()
    with pytest.raises(RefUpdateError, match="refs/heads/main would move non-fast-forward"):
        importing(second.path, signing_key, tmp_path / "target")
    assert run("git", "-C", repo, "for-each-ref") == before
    assert (tmp_path / "target" / "images" / "index.json").read_bytes() == index_before
    importing(second.path, signing_key, tmp_path / "target", force=True)
    new_main = dict((r.name, r.target) for r in second.manifest.repos[0].refs)["refs/heads/main"]
    assert run("git", "-C", repo, "rev-parse", "refs/heads/main").strip() == new_main


def test_platform_subset_records_the_source_index_digest(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    require_tool("skopeo")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: arm}\nimages:\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:1.0\n"
        "    name: registry.example.com/team/hello:1.0\n"
        "    platforms: [linux/arm64]\n"
    )
    result = export(spec, tmp_path / "arm.airbundle", signing_key)
    (image,) = result.manifest.images
    original = skopeo_digest(
        f"oci:{sample_tree}/layouts:hello:1.0".replace("layouts:hello", "layouts/hello")
    )
    assert str(image.source_digest) == original
    assert image.digest != image.source_digest
    assert image.platforms == ("linux/arm64",)
    importing(result.path, signing_key, tmp_path / "target")
    raw = run(
        "skopeo",
        "inspect",
        "--raw",
        f"oci:{tmp_path / 'target' / 'images'}:registry.example.com/team/hello:1.0",
    )
    # An OCI layout takes a sparse index: the tag names the upstream index
    # (issue 17), whose arm64 manifest alone is in the layout.
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == original
    children = {m["platform"]["architecture"]: m["digest"] for m in json.loads(raw)["manifests"]}
    blobs = tmp_path / "target" / "images" / "blobs" / "sha256"
    assert (blobs / children["arm64"].split(":", 1)[1]).is_file()
    assert not (blobs / children["amd64"].split(":", 1)[1]).exists()


@pytest.mark.parametrize(
    ("asked", "error"),
    [
        ("linux/amd64", None),
        ("linux/arm64", "no manifest for platform linux/arm64 (the image is a single manifest "
         "for linux/amd64)"),
        ("linux/amd64, linux/arm64", "no manifest for platform linux/arm64"),
    ],
)  # fmt: skip
def test_platforms_on_a_single_platform_image_must_match_its_config(
    asked: str, error: str | None, sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle.errors import SourceError

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: one}\nimages:\n"
        f"  - ref: oci:{sample_tree}/layouts/hello:0.9\n"
        "    name: registry.example.com/team/hello:0.9\n"
        f"    platforms: [{asked}]\n"
    )
    out = tmp_path / "one.airbundle"
    if error is None:
        (image,) = export(spec, out, signing_key).manifest.images
        assert image.platforms == ()
        return
    with pytest.raises(SourceError, match=re.escape(error)):
        export(spec, out, signing_key)
    assert not out.exists()


def test_second_signer_key_not_trusted_is_not_enough(
    exported: ExportResult, tmp_path: Path
) -> None:
    other = make_key(tmp_path, "other")
    from airbundle.errors import SignatureError

    with pytest.raises(SignatureError, match="not in trust set"):
        verify_bundle(exported.path, trust_policy(other.public))


def test_cli_with_relative_paths_from_another_folder(sample_tree: Path, tmp_path: Path) -> None:
    import sys

    work = tmp_path / "w"
    work.mkdir()
    cli = [sys.executable, "-m", "airbundle"]
    run(*cli, "key", "generate", "k", cwd=work)
    spec = os.path.relpath(sample_tree / "spec.yaml", work)
    (work / "out").mkdir()
    run(*cli, "export", spec, "-o", "out/b.airbundle", "--key", "k", cwd=work)
    run(*cli, "verify", "out/b.airbundle", "--trust", "k.pub", cwd=work)
    run(
        *cli,
        "import",
        "out/b.airbundle",
        "--trust",
        "k.pub",
        "--registry",
        "oci:air/img",
        "--git",
        "air/git",
        cwd=work,
    )
    assert (work / "air" / "git" / "gitops.git").is_dir()
    assert not list(work.rglob(".airbundle-tmp-*"))


def test_git_cache_is_reused_and_narrowed_to_the_spec(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = export(
        sample_tree / "spec.yaml", tmp_path / "a.airbundle", signing_key, cache_dir=cache
    )
    assert len(first.manifest.repos[0].refs) == 3
    (mirror,) = (cache / "git").glob("*-gitops.git")
    spec = tmp_path / "main-only.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: m}\nrepos:\n"
        f"  - name: gitops\n    url: {sample_tree / 'gitops'}\n    refs: [refs/heads/main]\n"
    )
    second = export(spec, tmp_path / "b.airbundle", signing_key, cache_dir=cache)
    assert [r.name for r in second.manifest.repos[0].refs] == ["refs/heads/main"]
    assert list((cache / "git").glob("*-gitops.git")) == [mirror]


def test_manual_verification_script_accepts_a_good_bundle_and_rejects_a_bad_one(
    exported: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    """docs/manual-verification.sh checks a bundle with tar, zstd, ssh-keygen,
    sha256sum, skopeo and git only: the README's promise, proven."""
    from support.env import REPO_ROOT

    for tool in ("zstd", "ssh-keygen", "skopeo", "git"):
        require_tool(tool)
    script = REPO_ROOT / "docs" / "manual-verification.sh"
    ok = subprocess.run(
        ["bash", str(script), str(exported.path), str(signing_key.public), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = bytearray(exported.path.read_bytes())
    data[-200] ^= 0x01
    bad = tmp_path / "bad.airbundle"
    bad.write_bytes(bytes(data))
    failed = subprocess.run(
        ["bash", str(script), str(bad), str(signing_key.public), str(tmp_path / "out2")],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0


def _manual_check(target: Path, key: KeyPair, out: Path) -> subprocess.CompletedProcess[str]:
    from support.env import REPO_ROOT

    for tool in ("zstd", "ssh-keygen", "skopeo", "git"):
        require_tool(tool)
    script = REPO_ROOT / "docs" / "manual-verification.sh"
    return subprocess.run(
        ["bash", str(script), str(target), str(key.public), str(out)],
        capture_output=True,
        text=True,
    )


def test_manual_verification_script_checks_a_volume_set_by_folder_and_by_index(
    exported: ExportResult, signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle.ops.volumes import split_bundle

    index = split_bundle(exported.path, 40_000, signing_keys(signing_key), folder=tmp_path / "set")
    volumes = sorted((tmp_path / "set").glob("*.0*"))
    assert len(volumes) >= 2
    for n, target in enumerate((tmp_path / "set", index)):
        proc = _manual_check(target, signing_key, tmp_path / f"out{n}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "volume(s) match the signed index" in proc.stdout
    # A damaged later volume is named before anything is extracted.
    data = bytearray(volumes[-1].read_bytes())
    data[len(data) // 2] ^= 0x01
    volumes[-1].write_bytes(bytes(data))
    bad = _manual_check(index, signing_key, tmp_path / "out-bad")
    assert bad.returncode != 0
    assert f"volume {volumes[-1].name} is damaged" in bad.stderr


def test_manual_verification_script_checks_an_incremental_bundle(
    exported: ExportResult, signing_key: KeyPair, sample_tree: Path, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    shutil.copytree(sample_tree, work, symlinks=True)
    run("git", "-C", work / "gitops", "-c", "user.name=t", "-c", "user.email=t@e",
        "commit", "-q", "--allow-empty", "-m", "one more")  # fmt: skip
    week2 = export(work / "spec.yaml", tmp_path / "w2.airbundle", signing_key,
                   since=(exported.path,))  # fmt: skip
    assert week2.manifest.base is not None
    assert week2.manifest.repos[0].prerequisites
    proc = _manual_check(week2.path, signing_key, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "incremental bundle" in proc.stdout


def test_refs_outside_heads_and_tags_need_a_flag(
    sample_tree: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle.errors import UsageError

    work = tmp_path / "w"
    shutil.copytree(sample_tree, work, symlinks=True)
    run("git", "-C", work / "gitops", "update-ref", "refs/notes/review", "HEAD")
    spec = work / "spec.yaml"
    spec.write_text(
        spec.read_text().replace(
            'refs: ["refs/heads/*", "refs/tags/*"]', 'refs: ["refs/heads/*", "refs/notes/*"]'
        )
    )
    bundle = export(spec, tmp_path / "n.airbundle", signing_key)
    with pytest.raises(UsageError, match="refs/notes/review, outside refs/heads"):
        importing(bundle.path, signing_key, tmp_path / "t")
    assert not (tmp_path / "t" / "git" / "gitops.git").exists()
    import_(
        bundle.path,
        signing_key,
        registry=f"oci:{tmp_path / 't' / 'images'}",
        git=str(tmp_path / "t" / "git"),
        allow_other_refs=True,
    )
    assert "refs/notes/review" in run("git", "-C", tmp_path / "t/git/gitops.git", "for-each-ref")


@pytest.mark.parametrize("name", ["bundle-spec.schema.json", "bundle-manifest.schema.json"])
def test_shipped_schemas_are_valid_json_schema_2020_12(name: str) -> None:
    from jsonschema import Draft202012Validator

    from support.env import REPO_ROOT

    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_a_failed_fetch_leaves_no_empty_mirror_in_the_cache(
    signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle.errors import SourceError

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: gone}\nrepos:\n"
        f"  - name: gitops\n    url: {tmp_path / 'no-such-repo'}\n"
    )
    cache = tmp_path / "cache"
    for _ in range(2):  # the second attempt meets no leftover either
        with pytest.raises(SourceError, match="fetching"):
            export(spec, tmp_path / "b.airbundle", signing_key, cache_dir=cache)
        assert list((cache / "git").glob("*.git")) == []
    assert not (tmp_path / "b.airbundle").exists()


def test_an_unchanged_repo_costs_next_to_nothing_in_an_incremental_bundle(
    exported: ExportResult, signing_key: KeyPair, sample_tree: Path, tmp_path: Path
) -> None:
    from airbundle.errors import TargetError
    from airbundle.ops.plan import make_plan

    again = export(sample_tree / "spec.yaml", tmp_path / "w2.airbundle", signing_key,
                   since=(exported.path,))  # fmt: skip
    (repo,) = again.manifest.repos
    full = {r.name: r.target for r in exported.manifest.repos[0].refs}
    assert {r.name: r.target for r in repo.refs} == full  # every ref re-applied
    member = next(m for m in again.manifest.members if m.path == repo.member)
    assert member.size < 512  # refs and prerequisites, an empty pack
    planned = make_plan(load_spec(sample_tree / "spec.yaml"), since=(exported.path,))
    assert planned.repos[0].size == 0  # plan says nothing to carry, and export agrees
    # Into the target that holds the base: a no-op for git, refs where they were.
    importing(exported.path, signing_key, tmp_path / "t")
    importing(again.path, signing_key, tmp_path / "t")
    refs = run("git", "-C", tmp_path / "t" / "git" / "gitops.git", "for-each-ref",
               "--format=%(refname) %(objectname)")  # fmt: skip
    assert dict(line.split() for line in refs.splitlines()) == full
    # Into a target that lacks the base: refused before anything is written.
    with pytest.raises(TargetError, match=r"lacks 2 commit\(s\) this bundle builds on"):
        importing(again.path, signing_key, tmp_path / "empty")
    assert not (tmp_path / "empty" / "git" / "gitops.git").exists()
