"""A digest in an image's name must be the digest of the root the bundle carries
(issue 11, item 8): export refuses to write such a bundle, and verify and import
refuse a signed manifest that says so, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airbundle.errors import EXIT_INTEGRITY, EXIT_IO, EXIT_OK, ManifestError, SourceError
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest, ImageEntry
from airbundle.format.reference import ImageReference
from airbundle.ops.export import export_bundle
from airbundle.ops.specfile import load_spec
from support.cli import run
from support.crafting import World, blob, make_manifest, world, write_bundle

INDEX = "application/vnd.oci.image.index.v1+json"
LIE = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def _root() -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()


def _signed(env: World, path: Path, ref: str) -> Path:
    """A bundle signed by the session key: one image named `ref`, whose root is
    an empty index (digest sha256 of _root())."""
    data = _root()
    members = [blob(data)]
    image = ImageEntry(
        ImageReference.parse(ref), "crafted", Digest.sha256_of(data), INDEX, len(data)
    )
    manifest = make_manifest(members, images=[image])
    return write_bundle(path, manifest, [], members, keys=[env.key])


@pytest.mark.parametrize(
    "ref",
    [f"example.com/app:1.0@{LIE}", f"example.com/app@{LIE}"],
    ids=["tag-and-digest", "digest-only"],
)
def test_a_signed_reference_that_lies_about_its_digest_is_refused(
    env: World, tmp_path: Path, ref: str
) -> None:
    bundle = _signed(env, tmp_path / "b.airbundle", ref)
    proc = run("verify", bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "images[0].ref" in proc.stderr and f"names digest {LIE}" in proc.stderr
    layout = tmp_path / "layout"
    proc = run(
        "import", bundle, "--trust", env.pub_path, "--registry", f"oci:{layout}",
        "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert proc.returncode == EXIT_INTEGRITY and "Traceback" not in proc.stderr
    assert not layout.exists() and not (tmp_path / "state").exists()
    with pytest.raises(ManifestError, match=r"images\[0\]\.ref: .* but the image's root is"):
        BundleManifest.from_bytes(
            make_manifest(
                [blob(_root())],
                images=[
                    ImageEntry(
                        ImageReference.parse(ref), "x", Digest.sha256_of(_root()), INDEX, 1
                    )
                ],
            ).to_bytes()
        )


def test_a_reference_with_the_true_digest_imports_and_the_layout_names_it(
    env: World, tmp_path: Path
) -> None:
    true = Digest.sha256_of(_root())
    bundle = _signed(env, tmp_path / "b.airbundle", f"example.com/app:1.0@{true}")
    layout = tmp_path / "layout"
    proc = run(
        "import", bundle, "--trust", env.pub_path, "--registry", f"oci:{layout}",
        "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert proc.returncode == EXIT_OK, proc.stderr
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == str(true)
    assert entry["annotations"]["org.opencontainers.image.ref.name"].endswith(f"@{true}")


def _spec(env: World, tmp_path: Path, name: str, platforms: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: refs}\nimages:\n"
        f"  - ref: oci:{env.root / 'layouts' / 'hello'}:1.0\n"
        f"    name: {name}\n{platforms}"
    )
    return spec


def _hello_index(env: World) -> str:
    index = json.loads((env.root / "layouts" / "hello" / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    ]
    return str(entry["digest"])


def test_export_refuses_a_name_whose_digest_is_not_the_root(env: World, tmp_path: Path) -> None:
    spec = _spec(env, tmp_path, f"registry.example.com/team/hello:1.0@{LIE}")
    out = tmp_path / "out.airbundle"
    proc = run("export", spec, "-o", out, "--key", env.key_path)
    assert proc.returncode == EXIT_IO, proc.stderr
    assert f"is named registry.example.com/team/hello:1.0@{LIE}" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_platform_subset_may_keep_a_name_pinned_to_the_source_index(
    env: World, tmp_path: Path
) -> None:
    """A subset carries the source's own index too (sparse): a name pinned to its
    digest is carried, and the manifest records that index beside the subset."""
    pinned = _hello_index(env)
    spec = _spec(
        env,
        tmp_path,
        f"registry.example.com/team/hello:1.0@{pinned}",
        "    platforms: [linux/amd64]\n",
    )
    result = export_bundle(load_spec(spec), _options(env, tmp_path))
    (image,) = result.manifest.images
    assert str(image.source_digest) == pinned and str(image.ref.digest) == pinned
    assert str(image.digest) != pinned


def test_a_platform_subset_refuses_a_name_pinned_to_another_digest(
    env: World, tmp_path: Path
) -> None:
    spec = _spec(
        env,
        tmp_path,
        f"registry.example.com/team/hello:1.0@{LIE}",
        "    platforms: [linux/amd64]\n",
    )
    with pytest.raises(SourceError, match="but the root it carries is"):
        export_bundle(load_spec(spec), _options(env, tmp_path))


def test_export_keeps_a_name_whose_digest_is_the_root(env: World, tmp_path: Path) -> None:
    pinned = _hello_index(env)
    spec = _spec(env, tmp_path, f"registry.example.com/team/hello:1.0@{pinned}")
    result = export_bundle(load_spec(spec), _options(env, tmp_path))
    (image,) = result.manifest.images
    assert str(image.digest) == pinned and str(image.ref.digest) == pinned


def _options(env: World, tmp_path: Path):  # type: ignore[no-untyped-def]
    from support.crafting import export_options

    return export_options(tmp_path / "out.airbundle", env.key)
