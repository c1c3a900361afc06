"""The connected side's blob cache: a repeated export downloads no blob twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

from airbundle.adapters.blobcache import BlobCache
from airbundle.ops.export import ExportOptions, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.specfile import load_spec
from support.fault_proxy import FaultProxy
from support.keys import KeyPair
from support.registry import Registry
from support.skopeo import push_oci_layout


def test_second_export_reads_blobs_from_the_cache(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    cache = tmp_path / "cache"
    with FaultProxy(registry.host) as proxy:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: c}\n"
            f"images:\n  - ref: {proxy.host}/team/hello:1.0\n"
        )
        key = (load_signing_key(signing_key.private, passphrase=None),)
        first = export_bundle(
            load_spec(spec),
            ExportOptions(output=tmp_path / "a.airbundle", keys=key, cache_dir=cache),
        )
        fetched = len(proxy.matching("GET", r"/blobs/sha256:"))
        second = export_bundle(
            load_spec(spec),
            ExportOptions(output=tmp_path / "b.airbundle", keys=key, cache_dir=cache),
        )
        refetched = len(proxy.matching("GET", r"/blobs/sha256:")) - fetched
    assert fetched == 5  # two configs, two arch layers, one shared layer
    assert refetched == 0
    assert {m.digest for m in first.manifest.members} == {m.digest for m in second.manifest.members}


def test_a_corrupt_cache_entry_is_not_trusted(tmp_path: Path) -> None:
    from airbundle.format.digest import Digest

    cache = BlobCache(tmp_path)
    data = b"x" * 1000
    digest = Digest.sha256_of(data)
    assert b"".join(cache.tee(digest, len(data), [data[:500], data[500:]])) == data
    assert cache.path(digest).read_bytes() == data
    # Wrong bytes never get the digest's name.
    other = Digest.sha256_of(b"y")
    list(cache.tee(other, 1, [b"z"]))
    assert not cache.path(other).exists()
    assert cache.get(digest, 999) is None  # size mismatch: not used


def test_prune_keeps_recently_used_blobs(tmp_path: Path) -> None:
    from airbundle.format.digest import Digest

    cache = BlobCache(tmp_path)
    old, new = b"old", b"new"
    for data in (old, new):
        list(cache.tee(Digest.sha256_of(data), len(data), [data]))
    past = time.time() - 40 * 86400
    os.utime(cache.path(Digest.sha256_of(old)), (past, past))
    result = cache.prune(older_than=30 * 86400)
    assert (result.removed, result.kept) == (1, 1)
    assert cache.path(Digest.sha256_of(new)).exists()
