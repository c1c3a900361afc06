"""`airbundle serve --bundle`: real clients pull and clone from a bundle served in
place, from a bundle file, from a volume set on read-only media and from a bundle
written before the seek table; what is refused (untrusted, incremental, expired),
what is never served (tampered members, media changed in place), the cache, the
page, two instances and a loopback-only namespace."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airbundle.errors import MemberDigestError
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleInfo, BundleManifest, blob_member_path
from airbundle.format.trust import TrustPolicy
from airbundle.ops.keys import load_trust
from airbundle.ops.serve_bundle import open_bundle_store
from airbundle.ops.volumes import split_bundle
from support.chromium import chromium
from support.crafting import World, world
from support.env import AIRBUNDLE, REPO_ROOT, clean_env, git_env, require_tool
from support.integration import starts_servers
from support.keys import KeyPair
from support.layout_writer import LayoutWriter
from support.legacy import LEGACY_PUB, LEGACY_SAMPLES, gzip_like
from support.net import free_port
from support.netns import netns_mount_run, netns_run
from support.podman import podman
from support.pull_through import PullThroughCache
from support.serve import Serve, page_without_addresses
from support.serve_bundle import (
    MiB,
    ServeReadOnly,
    bundle_from_layout,
    flip_byte,
    manifest_of,
    member_frame,
    member_spans,
    run_read_only,
)
from support.skopeo import skopeo_digest

KINDS = ["file", "volumes", "legacy"]


@dataclass(frozen=True)
class Source:
    kind: str
    bundle: Path  # what --bundle names: a file, or a volume folder
    pub: Path
    cache: Path
    manifest: BundleManifest

    def carried(self) -> dict[str, str]:
        return {str(i.ref): str(i.digest) for i in self.manifest.images}

    def args(self) -> list[str]:
        return [
            "--bundle",
            str(self.bundle),
            "--trust",
            str(self.pub),
            "--cache-dir",
            str(self.cache),
        ]

    def serve(self, workdir: Path) -> Serve | ServeReadOnly:
        if self.kind == "volumes":
            return ServeReadOnly(self.bundle, self.args(), workdir)
        return Serve(self.args(), workdir)


def _source(kind: str, w: World, root: Path) -> Source:
    bundle, pub = (LEGACY_SAMPLES, LEGACY_PUB) if kind == "legacy" else (w.bundle, w.pub_path)
    if kind == "volumes":
        bundle = root / "media"
        split_bundle(w.bundle, 40 * 1024, (w.key,), folder=bundle)
    return Source(kind, bundle, pub, root / "cache", manifest_of(bundle, pub))


@pytest.fixture(scope="module", params=KINDS)
@starts_servers
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, Source, Serve | ServeReadOnly]]:
    w = world(tmp_path_factory)
    source = _source(request.param, w, tmp_path_factory.mktemp(f"served-{request.param}"))
    with source.serve(source.cache.parent / "log") as server:
        yield w, source, server


def _skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    require_tool("skopeo")
    return subprocess.run(["skopeo", *args], capture_output=True, timeout=180, env=clean_env())


def _errors(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


# --- real clients, from each kind of source ------------------------------------------


def test_skopeo_copies_by_tag_digest_and_all(
    served: tuple[World, Source, Serve], tmp_path: Path
) -> None:
    _, source, server = served
    digest = source.carried()["registry.example.com/team/hello:1.0"]
    by_tag = f"docker://{server.host}/team/hello:1.0"
    by_digest = f"docker://{server.host}/team/hello@{digest}"
    assert skopeo_digest(by_tag) == digest
    assert skopeo_digest(by_digest) == digest
    inspect = json.loads(_skopeo("inspect", "--tls-verify=false", by_tag).stdout)
    assert inspect["RepoTags"] == ["0.9", "1.0"]
    for name, ref, extra in (
        ("tag", by_tag, []),
        ("digest", by_digest, []),
        ("all", by_tag, ["--all"]),
        ("app", f"docker://{server.host}/team/app:2.1", []),
    ):
        dest = tmp_path / name
        copied = _skopeo("copy", "--src-tls-verify=false", *extra, ref, f"dir:{dest}")
        assert copied.returncode == 0, copied.stderr
        if name == "all":
            manifest = (dest / "manifest.json").read_bytes()
            assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest
        blobs = [p for p in dest.iterdir() if len(p.name) == 64]
        assert blobs, name
        for blob in blobs:
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_podman_pulls(served: tuple[World, Source, Serve], tmp_path: Path) -> None:
    _, source, server = served
    digest = source.carried()["registry.example.com/team/hello:0.9"]
    (tmp_path / "podman").mkdir()
    (tmp_path / "podman" / "registries.conf").write_text("")
    ref = f"{server.host}/team/hello:0.9"
    pulled = podman(tmp_path / "podman", "pull", "--tls-verify=false", ref)
    assert pulled.returncode == 0, pulled.stderr
    listed = podman(tmp_path / "podman", "image", "inspect", ref)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["Digest"] == digest


def test_git_clone_fetch_shallow_and_partial_but_no_push(
    served: tuple[World, Source, Serve], tmp_path: Path
) -> None:
    require_tool("git")
    _, source, server = served
    url = f"{server.url}/git/gitops.git"
    env = git_env(tmp_path / "home")

    def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )

    repo = next(r for r in source.manifest.repos if r.name == "gitops")
    signed = {r.name: r.target for r in repo.refs}
    # Refs exactly as the signed manifest lists them.
    listed = [line.split("\t") for line in git("ls-remote", url).stdout.splitlines()]
    advertised = {ref: oid for oid, ref in listed if ref != "HEAD" and "^{}" not in ref}
    assert advertised == signed
    full = git("clone", "-q", url, str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    assert repo.head is not None
    assert git("rev-parse", "HEAD", cwd=tmp_path / "full").stdout.strip() == signed[repo.head]
    assert git("fetch", "-q", "--tags", "origin", cwd=tmp_path / "full").returncode == 0
    shallow = git("clone", "-q", "--depth", "1", url, str(tmp_path / "shallow"))
    assert shallow.returncode == 0, shallow.stderr
    assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "shallow").stdout.strip() == "1"
    deepened = git("fetch", "-q", "--unshallow", cwd=tmp_path / "shallow")
    assert deepened.returncode == 0, deepened.stderr
    assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "shallow").stdout.strip() == (
        git("rev-list", "--count", "HEAD", cwd=tmp_path / "full").stdout.strip()
    )
    partial = git("clone", "-q", "--filter=blob:none", url, str(tmp_path / "partial"))
    assert partial.returncode == 0, partial.stderr
    promisor = git("config", "remote.origin.promisor", cwd=tmp_path / "partial")
    assert promisor.stdout.strip() == "true"
    (tmp_path / "full" / "evil.txt").write_text("evil\n")
    git("add", "evil.txt", cwd=tmp_path / "full")
    git("-c", "user.name=x", "-c", "user.email=x@y", "commit", "-qm", "e", cwd=tmp_path / "full")
    assert git("push", "origin", "HEAD:refs/heads/evil", cwd=tmp_path / "full").returncode != 0
    assert "refs/heads/evil" not in git("ls-remote", url).stdout


def _in_netns(script: str, tmp_path: Path) -> dict[str, Any]:
    """`script` (Python, tests/ importable) in a namespace with only loopback and a
    mount namespace of its own; it prints one JSON line last."""
    require_tool("unshare")
    code = textwrap.dedent(f"""
        import json, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        tmp = Path({str(tmp_path)!r})
    """) + textwrap.dedent(script)
    proc = netns_mount_run([sys.executable, "-c", code], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_containerd_pulls_the_original_name_through_the_mirror_config(
    served: tuple[World, Source, Serve], tmp_path: Path
) -> None:
    w, source, _ = served
    digest = source.carried()["registry.example.com/team/hello:1.0"]
    start = (
        f"ServeReadOnly(Path({str(source.bundle)!r}), {source.args()!r}, tmp / 'serve')"
        if source.kind == "volumes"
        else f"Serve({source.args()!r}, tmp / 'serve')"
    )
    result = _in_netns(
        f"""
        from support.containerd import Containerd
        from support.serve import Serve
        from support.serve_bundle import ServeReadOnly
        with {start} as server:
            subprocess.run([sys.executable, "-m", "airbundle", "mirror-config", "{w.bundle}",
                            "-o", str(tmp / "mirrors"), "--registry", server.host, "--insecure",
                            "-q"], check=True)
            hosts = tmp / "mirrors" / "containerd" / "certs.d"
            with Containerd(tmp / "containerd") as ctd:
                pulled = ctd.ctr("images", "pull", "--hosts-dir", str(hosts),
                                 "--snapshotter", "native", "registry.example.com/team/hello:1.0")
                listed = ctd.ctr("images", "ls").stdout
            log = server.log_text()
        print(json.dumps({{"rc": pulled.returncode, "err": pulled.stderr, "ls": listed,
                           "log": log}}))
        """,
        tmp_path,
    )
    assert result["rc"] == 0, result["err"] + result["log"][-3000:]
    line = next(
        x for x in result["ls"].splitlines() if x.startswith("registry.example.com/team/hello:1.0")
    )
    assert digest in line
    assert "/v2/team/hello/manifests/1.0?ns=registry.example.com" in result["log"]


def test_docker_registry_as_a_pull_through_cache(
    served: tuple[World, Source, Serve], tmp_path: Path
) -> None:
    _, source, server = served
    digest = source.carried()["registry.example.com/team/hello:1.0"]
    with PullThroughCache(tmp_path / "cache", server.url) as cache:
        assert skopeo_digest(f"docker://{cache.host}/team/hello:1.0") == digest
        copied = _skopeo(
            "copy", "--all", "--src-tls-verify=false", f"docker://{cache.host}/team/hello:1.0",
            f"dir:{tmp_path / 'copy'}",
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "cache" / "storage" / "docker" / "registry" / "v2" / "blobs").is_dir()


def test_registries_conf_redirects_the_original_names(
    served: tuple[World, Source, Serve], tmp_path: Path
) -> None:
    source = served[1]
    names = ["registry.example.com/team/hello:1.0", "example.com/team/app:2.1"]
    start = (
        f"ServeReadOnly(Path({str(source.bundle)!r}), {source.args()!r}, tmp / 'serve')"
        if source.kind == "volumes"
        else f"Serve({source.args()!r}, tmp / 'serve')"
    )
    result = _in_netns(
        f"""
        import hashlib
        from support.serve import Serve
        from support.serve_bundle import ServeReadOnly
        with {start} as server:
            subprocess.run([sys.executable, "-m", "airbundle", "mirror-config",
                            "{source.bundle}", "-o", str(tmp / "mirrors"), "--registry",
                            server.host, "--insecure", "-q"], check=True)
            out = {{}}
            for name in {names!r}:
                raw = subprocess.run(["skopeo", "--registries-conf",
                                      str(tmp / "mirrors" / "registries.conf"), "inspect", "--raw",
                                      "docker://" + name], capture_output=True, check=True).stdout
                out[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name in names:
        assert result[name] == source.carried()[name]


# --- read-only media -------------------------------------------------------------------


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    w = world(tmp_path_factory)
    folder = tmp_path_factory.mktemp("ro") / "media"
    split_bundle(w.bundle, 40 * 1024, (w.key,), folder=folder)
    return w, folder


@pytest.mark.integration
def test_the_volume_folder_is_really_read_only_where_serve_runs(
    volumes: tuple[World, Path],
) -> None:
    _, folder = volumes
    proc = run_read_only(folder, "sh", "-c", f"touch {folder}/x")
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert not (folder / "x").exists()


@pytest.mark.integration
def test_two_instances_over_one_read_only_volume_folder_answer_the_same(
    volumes: tuple[World, Path], tmp_path: Path
) -> None:
    w, folder = volumes
    args = ["--bundle", str(folder), "--trust", str(w.pub_path)]
    with (
        ServeReadOnly(folder, [*args, "--cache-dir", str(tmp_path / "ca")], tmp_path / "a") as a,
        ServeReadOnly(folder, [*args, "--cache-dir", str(tmp_path / "cb")], tmp_path / "b") as b,
    ):
        manifest = json.loads(a.get("/v2/team/app/manifests/2.1").body)
        paths = [
            "/v2/_catalog",
            "/v2/team/hello/tags/list",
            "/v2/team/hello/manifests/1.0",
            "/v2/team/app/manifests/2.1",
            *(
                f"/v2/team/app/blobs/{d['digest']}"
                for d in [manifest["config"], *manifest["layers"]]
            ),
            "/git/gitops.git/info/refs?service=git-upload-pack",
        ]
        for path in paths:
            first, second = a.get(path), b.get(path)
            assert first.status == 200, path
            assert (first.status, first.body) == (second.status, second.body), path
        pages = [page_without_addresses(s) for s in (a, b)]
        assert pages[0] == pages[1]
        assert pages[0]["bundle"]["path"].startswith(str(folder / w.bundle.name))
        assert pages[0]["bundle"]["path"].endswith("(2 volumes)")


@pytest.mark.integration
def test_in_a_loopback_only_namespace(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """serve --bundle listening on every interface of a namespace with nothing but
    lo: it warns, and skopeo and git pull from it there."""
    w = world(tmp_path_factory)
    require_tool("unshare")
    script = f"""
set -e
{" ".join(AIRBUNDLE)} serve --bundle {w.bundle} --trust {w.pub_path} --cache-dir {tmp_path / "c"} \
    --listen 0.0.0.0:5000 2>{tmp_path / "log"} &
pid=$!
for i in $(seq 200); do grep -q "serving on" {tmp_path / "log"} && break; sleep 0.1; done
skopeo inspect --tls-verify=false --raw docker://127.0.0.1:5000/team/hello:1.0 | sha256sum
HOME={tmp_path} git clone -q http://127.0.0.1:5000/git/gitops.git {tmp_path / "clone"}
kill $pid
"""
    proc = netns_run(["sh", "-c", script], timeout=120)
    assert proc.returncode == 0, proc.stderr + (tmp_path / "log").read_text()
    digest = next(i.digest for i in w.export.manifest.images if i.ref.tag == "1.0")
    assert proc.stdout.split()[0] == digest.hex
    assert (tmp_path / "clone" / ".git").is_dir()
    assert "insecure = true" in (tmp_path / "log").read_text()


# --- a bundle with large layers: sendfile of raw members, ranges, tampering ----------------


@dataclass(frozen=True)
class Layers:
    bundle: Path
    pub: Path
    raw_a: bytes  # gzip-like, stored raw: sent from the media by sendfile
    raw_b: bytes
    text: bytes  # compressible: decoded from its frames
    manifest: str


def _text(size: int) -> bytes:
    line = b"a line of a layer that compresses well, with a counter "
    out = bytearray()
    n = 0
    while len(out) < size:
        out += line + str(n).encode() + b"\n"
        n += 1
    return bytes(out[:size])


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Layers:
    w = world(tmp_path_factory)
    root = tmp_path_factory.mktemp("layers")
    raw_a, raw_b, text = gzip_like(3 * MiB + 777, b"a"), gzip_like(MiB + 5, b"b"), _text(900_000)
    writer = LayoutWriter(root / "layout")
    image = writer.image(b'{"architecture":"amd64","os":"linux"}', [raw_a, raw_b, text])
    writer.tag("registry.example.com/big/layers:1", image)
    writer.finish()
    bundle = bundle_from_layout(root / "layout", root / "layers.airbundle", w.key)
    bundle.chmod(0o444)
    return Layers(bundle, w.pub_path, raw_a, raw_b, text, image.digest)


def _blob_url(data: bytes) -> str:
    return f"/v2/big/layers/blobs/sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.integration
def test_raw_and_compressed_layers_answer_any_range_exactly(layers: Layers, tmp_path: Path) -> None:
    args = [
        "--bundle",
        str(layers.bundle),
        "--trust",
        str(layers.pub),
        "--cache-dir",
        str(tmp_path),
    ]
    with Serve(args, tmp_path) as server:
        for data in (layers.raw_a, layers.raw_b, layers.text):
            whole = server.get(_blob_url(data))
            assert whole.status == 200
            assert whole.body == data
            size = len(data)
            for start, end in ((0, 0), (1, 130_000), (131_069, 131_075), (size - 9, size - 1)):
                part = server.get(_blob_url(data), headers={"Range": f"bytes={start}-{end}"})
                assert part.status == 206
                assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
                assert part.body == data[start : end + 1]
            assert server.get(_blob_url(data), method="HEAD").headers["content-length"] == str(size)
        copied = _skopeo(
            "copy", "--src-tls-verify=false", f"docker://{server.host}/big/layers:1",
            f"dir:{tmp_path / 'copy'}",
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        assert (tmp_path / "copy" / hashlib.sha256(layers.raw_a).hexdigest()).read_bytes() == (
            layers.raw_a
        )


@pytest.mark.integration
def test_a_tampered_member_is_never_served_and_the_others_are(
    layers: Layers, tmp_path: Path
) -> None:
    bundle = tmp_path / "tampered.airbundle"
    shutil.copyfile(layers.bundle, bundle)
    raw = blob_member_path(Digest.sha256_of(layers.raw_a))
    (file, offset, _), *_ = member_spans(bundle, layers.pub, raw)
    flip_byte(file, offset + 1000)  # inside a raw block: the frames still decode
    text = blob_member_path(Digest.sha256_of(layers.text))
    frame, size = member_frame(bundle, layers.pub, text)
    flip_byte(bundle, frame + size // 2)  # inside a compressed frame: its checksum fails
    args = ["--bundle", str(bundle), "--trust", str(layers.pub), "--cache-dir", str(tmp_path)]
    with Serve(args, tmp_path) as server:
        for member, data in ((raw, layers.raw_a), (text, layers.text)):
            for method in ("GET", "HEAD", "GET"):
                got = server.get(_blob_url(data), method=method)
                assert got.status == 500, (member, method)
                if method == "GET":
                    assert _errors(got.body) == ["UNKNOWN"]
                    assert member in json.loads(got.body)["errors"][0]["detail"]
            ranged = server.get(_blob_url(data), headers={"Range": "bytes=0-9"})
            assert ranged.status == 500
            assert member in server.log_text()
        assert "corrupt or was tampered with" in server.log_text()
        # The other members still serve, whole.
        assert server.get(_blob_url(layers.raw_b)).body == layers.raw_b
        assert server.get(f"/v2/big/layers/manifests/{layers.manifest}").status == 200
        page = server.get("/", headers={"Accept": "application/json"}).json()
        assert page["bundle"]["failed"] == sorted([raw, text])
        copied = _skopeo(
            "copy", "--src-tls-verify=false", f"docker://{server.host}/big/layers:1",
            f"dir:{tmp_path / 'copy'}",
        )  # fmt: skip
        assert copied.returncode != 0


@pytest.mark.integration
def test_media_changed_in_place_stops_sending_blobs(layers: Layers, tmp_path: Path) -> None:
    bundle = tmp_path / "writable.airbundle"
    shutil.copyfile(layers.bundle, bundle)
    args = ["--bundle", str(bundle), "--trust", str(layers.pub), "--cache-dir", str(tmp_path)]
    with Serve(args, tmp_path) as server:
        assert server.get(_blob_url(layers.raw_b)).body == layers.raw_b
        # The verdict on raw_b stands only while the file is the one hashed.
        (file, offset, _), *_ = member_spans(bundle, layers.pub, blob_member_path(
            Digest.sha256_of(layers.raw_b)))  # fmt: skip
        flip_byte(file, offset + 10)
        changed = server.get(_blob_url(layers.raw_b))
        assert changed.status == 500
        assert "changed on its media" in json.loads(changed.body)["errors"][0]["detail"]
        assert server.get(_blob_url(layers.raw_a)).status == 500
        assert "changed on its media" in server.log_text()


# --- refused before listening ------------------------------------------------------------


def _serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AIRBUNDLE, "serve", *args], capture_output=True, text=True, timeout=120, env=clean_env()
    )


def test_an_untrusted_bundle_is_refused_before_listening(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    port = free_port()
    refused = _serve_once(
        "--bundle", str(w.bundle), "--trust", str(w.other_pub_path),
        "--cache-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "serving on" not in refused.stderr
    assert "signature" in refused.stderr
    assert not (tmp_path / "frames").exists()


def test_an_incremental_bundle_is_refused(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    writer = LayoutWriter(tmp_path / "layout")
    writer.tag("registry.example.com/x/y:1", writer.image(b"{}", [b"layer"]))
    writer.finish()
    base = ({"kind": "bundle", "name": "week1", "id": "11111111-2222-4333-8444-555555555555"},)
    bundle = bundle_from_layout(tmp_path / "layout", tmp_path / "inc.airbundle", w.key, base=base)
    refused = _serve_once("--bundle", str(bundle), "--trust", str(w.pub_path), "--cache-dir",
                          str(tmp_path / "c"))  # fmt: skip
    assert refused.returncode == 2
    assert "incremental bundle (built on bundle week1" in refused.stderr
    assert "serving on" not in refused.stderr


@pytest.mark.integration
def test_an_expired_bundle_is_refused_unless_allowed(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    writer = LayoutWriter(tmp_path / "layout")
    writer.tag("registry.example.com/x/y:1", writer.image(b"{}", [b"layer"]))
    writer.finish()
    expired = bundle_from_layout(
        tmp_path / "layout",
        tmp_path / "old.airbundle",
        w.key,
        bundle=BundleInfo(
            name="old",
            id=w.export.manifest.bundle.id,
            created=datetime(2024, 1, 1, tzinfo=UTC),
            tool="tests",
            expires=datetime(2024, 2, 1, tzinfo=UTC),
        ),
    )
    args = ["--bundle", str(expired), "--trust", str(w.pub_path), "--cache-dir", str(tmp_path)]
    refused = _serve_once(*args)
    assert refused.returncode == 1
    assert "expired on 2024-02-01" in refused.stderr
    with Serve([*args, "--allow-expired"], tmp_path) as server:
        assert server.get("/v2/x/y/tags/list").json()["tags"] == ["1"]
        assert "ALLOWED EXPIRED" in server.log_text()


# --- old bundles and the cache ------------------------------------------------------------


@pytest.mark.integration
def test_an_old_bundle_is_indexed_once_and_its_shared_members_extracted(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["--bundle", str(LEGACY_SAMPLES), "--trust", str(LEGACY_PUB), "--cache-dir", str(cache)]
    with Serve(args, tmp_path / "one") as server:
        assert server.get("/v2/team/hello/tags/list").json()["tags"] == ["0.9", "1.0"]
        assert "written before the seek table" in server.log_text()
        page = server.get("/", headers={"Accept": "application/json"}).json()
        assert page["bundle"]["frames"] == "indexed"
    (index,) = (cache / "frames").iterdir()
    copies = sorted((cache / "members" / "sha256").iterdir())
    assert len(copies) == 16  # every member but images/oci-layout, which starts the frame
    for copy in copies:
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == copy.name
    stamps = {p: p.stat().st_mtime_ns for p in [index, *copies]}
    # A copy damaged in the cache is extracted again, never served.
    damaged = copies[0]
    damaged.write_bytes(b"not what was signed")
    with Serve(args, tmp_path / "two") as server:
        assert server.get("/v2/team/app/manifests/2.1").status == 200
        for copy in copies:
            digest = "sha256:" + copy.name
            for repo in ("team/hello", "team/app"):
                got = server.get(f"/v2/{repo}/blobs/{digest}")
                if got.status == 200:
                    assert hashlib.sha256(got.body).hexdigest() == copy.name
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.name
    # The index and the intact copies were read back, not written again.
    assert all(p.stat().st_mtime_ns == stamps[p] for p in stamps if p != damaged)


@pytest.mark.integration
def test_a_git_repo_in_the_cache_with_other_refs_is_built_again(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    args = ["--bundle", str(w.bundle), "--trust", str(w.pub_path), "--cache-dir", str(tmp_path)]
    env = git_env(tmp_path / "home")
    with Serve(args, tmp_path / "one") as server:
        first = subprocess.run(["git", "ls-remote", f"{server.url}/git/gitops.git"], env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    (repo,) = (tmp_path / "git").glob("*/gitops.git")
    main = next(r for r in w.export.manifest.repos[0].refs if r.name == "refs/heads/main")
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "refs/heads/extra", main.target],
                   check=True, env=env)  # fmt: skip
    with Serve(args, tmp_path / "two") as server:
        second = subprocess.run(["git", "ls-remote", f"{server.url}/git/gitops.git"], env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "refs/heads/extra" not in second.stdout
    assert second.stdout == first.stdout


@pytest.mark.integration
def test_a_tampered_git_bundle_member_is_not_served(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    bundle = tmp_path / "tampered.airbundle"
    shutil.copyfile(w.bundle, bundle)
    bundle.chmod(0o644)
    frame, size = member_frame(bundle, w.pub_path, "repos/gitops.bundle")
    flip_byte(bundle, frame + size // 2)
    args = ["--bundle", str(bundle), "--trust", str(w.pub_path), "--cache-dir", str(tmp_path)]
    with Serve(args, tmp_path) as server:
        cloned = subprocess.run(
            ["git", "clone", "-q", f"{server.url}/git/gitops.git", str(tmp_path / "c")],
            env=git_env(tmp_path / "home"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cloned.returncode != 0
        assert "repos/gitops.bundle" in server.log_text()
        # The images still serve.
        assert server.get("/v2/team/hello/manifests/1.0").status == 200
    assert not list((tmp_path / "git").glob("*/gitops.git"))


# --- the page -------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_page_names_the_bundle_its_signers_and_what_it_serves(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    args = ["--bundle", str(w.bundle), "--trust", str(w.pub_path), "--cache-dir", str(tmp_path)]
    info = w.export.manifest.bundle
    with Serve(args, tmp_path) as server:
        data = server.get("/", headers={"Accept": "application/json"}).json()
        bundle = data["bundle"]
        assert (bundle["name"], bundle["id"], bundle["channel"], bundle["sequence"]) == (
            info.name, info.id, info.channel, info.sequence,
        )  # fmt: skip
        assert bundle["created"] == "2024-01-01T00:00:00Z"
        assert bundle["frames"] == "seek table"
        (signer,) = bundle["signers"]
        assert signer["comment"] == "signer@test"
        hello = next(i for i in data["images"] if i["tag"] == "1.0")
        assert hello["pull"] == f"{server.host}/team/hello:1.0"
        assert hello["platforms"] == ["linux/amd64", "linux/arm64"]
        assert [r["name"] for r in data["repos"]] == ["gitops"]
        assert {r["ref"] for r in data["repos"][0]["refs"]} >= {"refs/heads/main"}
        dom = chromium(server.url + "/", tmp_path / "profile", "--dump-dom")
        assert info.id in dom
        assert signer["fingerprint"] in dom
        assert f"{server.host}/team/hello:1.0" in dom
        assert f"git clone {server.url}/git/gitops.git" in dom


@pytest.mark.integration
def test_serve_writes_only_into_its_cache(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    home = tmp_path / "home"
    home.mkdir()
    args = ["--bundle", str(w.bundle), "--trust", str(w.pub_path)]
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    with Serve(args, tmp_path / "log", env=env) as server:
        assert server.get("/git/gitops.git/info/refs?service=git-upload-pack").status == 200
    assert list(home.iterdir()) == []
    assert (tmp_path / "xdg" / "airbundle" / "serve" / "git").is_dir()
    assert os.stat(w.bundle).st_mode & 0o222 == 0  # the bundle was never writable


# --- the store, without a server -------------------------------------------------------------


@pytest.mark.parametrize("tampered", [False, True])
def test_concurrent_first_requests_hash_a_member_once(
    layers: Layers, tmp_path: Path, tampered: bool
) -> None:
    bundle = tmp_path / "b.airbundle"
    shutil.copyfile(layers.bundle, bundle)
    raw = blob_member_path(Digest.sha256_of(layers.raw_a))
    if tampered:
        (file, offset, _), *_ = member_spans(bundle, layers.pub, raw)
        flip_byte(file, offset + 7)
    policy = TrustPolicy(tuple(load_trust([layers.pub])))
    store = open_bundle_store(bundle, policy, cache_dir=tmp_path / "cache")
    try:
        hashed: list[str] = []
        verify = store.access.verify_member

        def counted(path: str) -> None:
            hashed.append(path)
            verify(path)

        store.access.verify_member = counted  # type: ignore[method-assign]

        def first_request(_: int) -> str:
            try:
                store.vouch(raw)
            except MemberDigestError as exc:
                return exc.message
            return "ok"

        with ThreadPoolExecutor(8) as pool:
            answers = set(pool.map(first_request, range(32)))
        assert hashed == [raw]
        if tampered:
            (answer,) = answers
            assert raw in answer and "tampered with" in answer
        else:
            assert answers == {"ok"}
    finally:
        store.close()


@pytest.mark.integration
def test_keep_source_host_serves_under_the_full_name(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    w = world(tmp_path_factory)
    args = ["--bundle", str(w.bundle), "--trust", str(w.pub_path), "--cache-dir", str(tmp_path)]
    with Serve([*args, "--keep-source-host"], tmp_path) as server:
        assert server.get("/v2/_catalog").json()["repositories"] == [
            "example.com/team/app",
            "registry.example.com/team/hello",
        ]
        assert server.get("/v2/registry.example.com/team/hello/manifests/1.0").status == 200


@pytest.mark.integration
def test_a_platform_subset_serves_the_upstream_digest_as_a_layout_import_would(
    hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    """A subset bundle carries the upstream index beside the subset: the tag names
    the upstream index (sparse), pins on its digest resolve, the platform left
    behind is absent, exactly as serve over an import into an OCI layout."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: subset}\nimages:\n"
        f"  - ref: oci:{hello_layout}:1.0\n    name: registry.example.com/team/hello:1.0\n"
        "    platforms: [linux/amd64]\n"
    )
    bundle = tmp_path / "subset.airbundle"
    made = subprocess.run(
        [*AIRBUNDLE, "export", str(spec), "-o", str(bundle), "--key", str(signing_key.private)],
        capture_output=True, text=True, env=clean_env({"HOME": str(tmp_path)}),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (image,) = manifest_of(bundle, signing_key.public).images
    upstream = str(image.source_digest)
    args = [
        "--bundle",
        str(bundle),
        "--trust",
        str(signing_key.public),
        "--cache-dir",
        str(tmp_path),
    ]
    with Serve(args, tmp_path / "serve") as server:
        assert skopeo_digest(f"docker://{server.host}/team/hello:1.0") == upstream
        assert skopeo_digest(f"docker://{server.host}/team/hello@{upstream}") == upstream
        for arch, ok in (("amd64", True), ("arm64", False)):
            copied = _skopeo(
                "--override-os", "linux", "--override-arch", arch, "copy",
                "--src-tls-verify=false", f"docker://{server.host}/team/hello@{upstream}",
                f"oci:{tmp_path / arch}:x",
            )  # fmt: skip
            assert (copied.returncode == 0) == ok, copied.stderr
        assert "warning" not in server.log_text().lower()
