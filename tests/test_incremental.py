"""The weekly routine: a full bundle, then incremental ones, on volumes, into a
real registry and git server — ending exactly where one full import would."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import KeyPair
from servers import GitDaemon, Registry, skopeo_raw_manifest

from airbundle.errors import TargetError
from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.importer import ImportOptions, import_bundle
from airbundle.ops.inventory import take_inventory
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy

LAYER = 1 << 20  # incompressible bytes per changed layer
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def _blob(root: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_app(layout: Path, week: int) -> None:
    """app:{week}: a base layer shared by every week, and one layer that changes."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    base = _blob(
        layout,
        _tar("base.bin", hashlib.shake_256(b"base").digest(LAYER)),
        "application/vnd.oci.image.layer.v1.tar",
    )
    app = _blob(
        layout,
        _tar("app.bin", hashlib.shake_256(b"week%d" % week).digest(LAYER)),
        "application/vnd.oci.image.layer.v1.tar",
    )
    config = _blob(
        layout,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [base["digest"], app["digest"]]},
            }
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = _blob(
        layout,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": [base, app],
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["annotations"] = {"org.opencontainers.image.ref.name": str(week)}
    index_path = layout / "index.json"
    entries = json.loads(index_path.read_text())["manifests"] if index_path.exists() else []
    index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": [*entries, manifest]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def commit(repo: Path, count: int, tag: str) -> None:
    for i in range(count):
        (repo / "deploy.yaml").write_text(f"replicas: {i}\nweek: {tag}\n")
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=GIT_ENV)
        subprocess.run(
            ["git", "-C", str(repo), "commit", "-qm", f"{tag} {i}"], check=True, env=GIT_ENV
        )


def write_spec(folder: Path, weeks: list[int]) -> Path:
    images = "".join(
        f"  - ref: oci:layout:{w}\n    name: example.com/team/app:{w}\n" for w in weeks
    )
    spec = folder / f"spec-{weeks[-1]}.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: weekly}\n"
        f"images:\n{images}repos:\n  - name: gitops\n    url: gitops\n"
    )
    return spec


def export(spec: Path, out: Path, key: KeyPair, seq: int, **kw: object) -> ExportResult:
    options = ExportOptions(
        output=out, keys=(load_signing_key(key.private, passphrase=None),), sequence=seq, **kw
    )  # type: ignore[arg-type]
    return export_bundle(load_spec(spec), options)


def import_(path: Path, key: KeyPair, registry: str, git: str, state: Path) -> object:
    policy = load_policy(load_trust([key.public]), 1)
    return import_bundle(
        path, ImportOptions(policy=policy, registry=registry, git=git, state_dir=state)
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    write_app(folder / "layout", 1)
    subprocess.run(
        ["git", "init", "-q", "-b", "main", str(folder / "gitops")], check=True, env=GIT_ENV
    )
    commit(folder / "gitops", 3, "w1")
    return folder


def state_of(registry: Registry, git: GitDaemon, weeks: list[int]) -> dict[str, str]:
    out = {
        f"app:{w}": hashlib.sha256(
            skopeo_raw_manifest(registry, f"mirror/team/app:{w}")
        ).hexdigest()
        for w in weeks
    }
    refs = subprocess.run(
        ["git", "ls-remote", git.url("gitops.git")], capture_output=True, text=True, check=True
    ).stdout
    out["refs"] = refs
    return out


def test_weekly_routine_full_then_two_incrementals_on_three_volumes_each(
    source: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    registry: Registry,
    target_registry: Registry,
    git_daemon: GitDaemon,
) -> None:
    media = tmp_path / "media"
    git_daemon.init_bare("gitops.git")
    template = f"git://{git_daemon.host}/{{name}}.git"
    bundles = []
    for week in (1, 2, 3):
        if week > 1:
            write_app(source / "layout", week)
            commit(source / "gitops", 10, f"w{week}")
        spec = write_spec(source, list(range(1, week + 1)))
        since = (bundles[-1].path,) if bundles else ()
        probe = export(spec, tmp_path / f"probe{week}.airbundle", signing_key, week, since=since)
        size = probe.size
        result = export(
            spec,
            media / f"w{week}" / "weekly.airbundle",
            signing_key,
            week,
            since=since,
            # Slack for what may differ between two runs (git's threaded delta
            # search, the volume index); three volumes still need > 2/3 of it.
            split_size=size // 3 + size // 20,
        )
        volumes = sorted(p.name for p in (media / f"w{week}").glob("weekly.airbundle.0*"))
        assert len(volumes) == 3, volumes
        bundles.append(result)
        import_(
            result.path, signing_key, f"{target_registry.host}/mirror", template, tmp_path / "state"
        )

    # One full import of the newest spec into a fresh registry and git server.
    full = export(write_spec(source, [1, 2, 3]), tmp_path / "full.airbundle", signing_key, 3)
    with GitDaemon(tmp_path / "fresh-git" / "repos") as fresh_git:
        fresh_git.init_bare("gitops.git")
        import_(
            full.path,
            signing_key,
            f"{registry.host}/mirror",
            f"git://{fresh_git.host}/{{name}}.git",
            tmp_path / "state2",
        )
        assert state_of(target_registry, git_daemon, [1, 2, 3]) == state_of(
            registry, fresh_git, [1, 2, 3]
        )


def test_incremental_size_is_the_changed_layer_plus_new_commits(
    source: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    week1 = export(write_spec(source, [1]), tmp_path / "w1.airbundle", signing_key, 1)
    old_tip = subprocess.run(
        ["git", "-C", str(source / "gitops"), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    write_app(source / "layout", 2)
    commit(source / "gitops", 10, "w2")
    delta = export(
        write_spec(source, [2]), tmp_path / "w2.airbundle", signing_key, 2, since=(week1.path,)
    )
    changed_layer = LAYER + 1024  # the tar around it
    subprocess.run(
        [
            "git",
            "-C",
            str(source / "gitops"),
            "bundle",
            "create",
            "-q",
            str(tmp_path / "new.gitbundle"),
            "main",
            f"^{old_tip}",
        ],
        check=True,
        env=GIT_ENV,
    )
    new_git = (tmp_path / "new.gitbundle").stat().st_size
    members = {m.path for m in delta.manifest.members}
    assert not any(
        str(m.digest) in week1.manifest.member_index
        for m in delta.manifest.members
        if m.path.startswith("images/blobs/") and m.size > 4096
    )
    assert "repos/gitops.bundle" in members
    assert delta.manifest.repos[0].prerequisites
    assert delta.size <= 1.05 * (changed_layer + new_git), (delta.size, changed_layer, new_git)
    assert delta.manifest.base[0]["id"] == week1.manifest.bundle.id


def test_incremental_into_an_empty_target_names_what_is_missing_and_writes_nothing(
    source: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    week1 = export(write_spec(source, [1]), tmp_path / "w1.airbundle", signing_key, 1)
    write_app(source / "layout", 2)
    commit(source / "gitops", 2, "w2")
    delta = export(
        write_spec(source, [2]), tmp_path / "w2.airbundle", signing_key, 2, since=(week1.path,)
    )
    target = tmp_path / "target"
    with pytest.raises(TargetError, match=r"lacks .* commit") as caught:
        import_(
            delta.path,
            signing_key,
            f"oci:{target / 'img'}",
            str(target / "git"),
            tmp_path / "state",
        )
    assert week1.manifest.bundle.id in (caught.value.hint or "")
    assert not (target / "git").exists() or not list((target / "git").iterdir())
    # Images only: the missing base layer is named before any blob is written.
    week1_images = export(_images_only(source, [1]), tmp_path / "i1.airbundle", signing_key, 1)
    delta_images = export(
        _images_only(source, [2]),
        tmp_path / "i2.airbundle",
        signing_key,
        2,
        since=(week1_images.path,),
    )
    with pytest.raises(TargetError, match=r"is neither in the bundle nor in oci:") as caught:
        import_(
            delta_images.path,
            signing_key,
            f"oci:{target / 'img2'}",
            str(target / "g2"),
            tmp_path / "state",
        )
    assert week1_images.manifest.bundle.id in (caught.value.hint or "")
    blobs = target / "img2" / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())


def _images_only(source: Path, weeks: list[int]) -> Path:
    spec = write_spec(source, weeks)
    text = spec.read_text().split("repos:")[0]
    path = source / f"images-{weeks[-1]}.yaml"
    path.write_text(text)
    return path


def test_inventory_from_the_other_side_gives_the_same_delta(
    source: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    week1 = export(write_spec(source, [1]), tmp_path / "w1.airbundle", signing_key, 1)
    target = tmp_path / "target"
    import_(
        week1.path, signing_key, f"oci:{target / 'img'}", str(target / "git"), tmp_path / "state"
    )
    inventory = take_inventory(
        registry=f"oci:{target / 'img'}", git_target=str(target / "git"), repo_names=[]
    )
    (tmp_path / "inventory.json").write_bytes(inventory.to_bytes())
    assert "gitops" in inventory.repos
    write_app(source / "layout", 2)
    commit(source / "gitops", 4, "w2")
    spec = write_spec(source, [2])
    by_bundle = export(spec, tmp_path / "a.airbundle", signing_key, 2, since=(week1.path,))
    by_inventory = export(
        spec, tmp_path / "b.airbundle", signing_key, 2, since=(tmp_path / "inventory.json",)
    )
    assert {m.path for m in by_bundle.manifest.members} == {
        m.path for m in by_inventory.manifest.members
    }
    assert by_inventory.manifest.base[0]["kind"] == "inventory"
    import_(
        by_inventory.path,
        signing_key,
        f"oci:{target / 'img'}",
        str(target / "git"),
        tmp_path / "state",
    )
    refs = subprocess.run(
        ["git", "-C", str(target / "git" / "gitops.git"), "rev-parse", "refs/heads/main"],
        capture_output=True,
        text=True,
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(source / "gitops"), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert refs.stdout == head.stdout
