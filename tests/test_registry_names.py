"""A registry source may be given the name it carries: an image pulled from a
private mirror travels, lands and is mirror-configured under its upstream name."""

from __future__ import annotations

from pathlib import Path

import pytest

from airbundle.format.mapping import MappingOptions, RegistryLocation
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.mirrors import carried_from_bundle
from airbundle.ops.specfile import load_spec
from support.env import hermetic
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import push_oci_layout


def test_a_registry_source_carries_the_name_the_spec_gives_it(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    hermetic(monkeypatch, tmp_path / "env")
    push_oci_layout(registry, hello_layout, "1.0", "dockerhub/library/hello:1.0")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: named}\nimages:\n"
        f"  - ref: {registry.host}/dockerhub/library/hello:1.0\n"
        "    name: docker.io/library/hello:1.0\n"
    )
    key = load_signing_key(signing_key.private, passphrase=None)
    result = export_bundle(
        load_spec(spec), ExportOptions(output=tmp_path / "b.airbundle", keys=(key,))
    )
    (image,) = result.manifest.images
    assert str(image.ref) == "docker.io/library/hello:1.0"
    assert image.source == f"{registry.host}/dockerhub/library/hello:1.0"
    # Mirror configuration names the upstream, never the private mirror.
    _, carried = carried_from_bundle(
        result.path, RegistryLocation.parse("mirror.internal:5000/m"), MappingOptions()
    )
    assert [(str(c.ref), c.mirror_host, c.mirror_repository) for c in carried] == [
        ("docker.io/library/hello:1.0", "mirror.internal:5000", "m/library/hello")
    ]
