"""Real clients pull from `airbundle serve`: skopeo, podman, containerd (with the
hosts.toml mirror-config writes, asking for the original name), Debian's
docker-registry as a pull-through cache, and skopeo through the registries.conf
mirror-config writes. Everything on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.crafting import World, world
from support.env import AIRBUNDLE, REPO_ROOT, clean_env, require_tool
from support.integration import starts_servers
from support.netns import netns_mount_run, netns_run
from support.podman import podman
from support.pull_through import PullThroughCache
from support.serve import Serve
from support.skopeo import skopeo_digest


@pytest.fixture(scope="module")
@starts_servers
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Path, Serve]]:
    w = world(tmp_path_factory)
    root = tmp_path_factory.mktemp("served")
    subprocess.run(
        [
            *AIRBUNDLE,
            "import",
            str(w.bundle),
            "--trust",
            str(w.pub_path),
            "--registry",
            f"oci:{root / 'images'}",
            "--git",
            str(root / "git"),
            "--state-dir",
            str(root / "state"),
            "-q",
        ],
        check=True,
        timeout=120,
    )
    with Serve(["--registry", f"oci:{root / 'images'}", "--git", str(root / "git")], root) as s:
        yield w, root, s


def _carried(root: Path) -> dict[str, str]:
    """Full reference -> digest, as the layout import wrote holds them."""
    index = json.loads((root / "images" / "index.json").read_text())
    return {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }


def _skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    require_tool("skopeo")
    return subprocess.run(["skopeo", *args], capture_output=True, timeout=180, env=clean_env())


def test_skopeo_inspect_and_copy_by_tag_digest_and_all(
    served: tuple[World, Path, Serve], tmp_path: Path
) -> None:
    _, root, server = served
    digest = _carried(root)["registry.example.com/team/hello:1.0"]
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
    ):
        dest = tmp_path / name
        copied = _skopeo("copy", "--src-tls-verify=false", *extra, ref, f"dir:{dest}")
        assert copied.returncode == 0, copied.stderr
        # skopeo checks every blob's digest as it copies; the manifests match the layout.
        if name == "all":
            assert (
                "sha256:" + hashlib.sha256((dest / "manifest.json").read_bytes()).hexdigest()
                == digest
            )
        blobs = [p for p in dest.iterdir() if len(p.name) == 64]
        assert blobs, name
        for blob in blobs:
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_podman_pull(served: tuple[World, Path, Serve], tmp_path: Path) -> None:
    _, root, server = served
    digest = _carried(root)["registry.example.com/team/hello:0.9"]
    (tmp_path / "podman").mkdir()
    (tmp_path / "podman" / "registries.conf").write_text("")
    pulled = podman(
        tmp_path / "podman", "pull", "--tls-verify=false", f"{server.host}/team/hello:0.9"
    )
    assert pulled.returncode == 0, pulled.stderr
    listed = podman(tmp_path / "podman", "image", "inspect", f"{server.host}/team/hello:0.9")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["Digest"] == digest


def _in_netns(script: str, tmp_path: Path, *, mounts: bool = False) -> dict[str, Any]:
    """Run `script` (Python, with tests/ importable) in a namespace with only
    loopback: a client that fell back to the original registry would fail there
    instead of reaching out. The script prints one JSON line last."""
    require_tool("unshare")
    code = textwrap.dedent(f"""
        import json, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        tmp = Path({str(tmp_path)!r})
    """) + textwrap.dedent(script)
    run = netns_mount_run if mounts else netns_run
    proc = run([sys.executable, "-c", code], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_containerd_pulls_the_original_name_through_the_mirror_config(
    served: tuple[World, Path, Serve], tmp_path: Path
) -> None:
    w, root, _ = served
    digest = _carried(root)["registry.example.com/team/hello:1.0"]
    result = _in_netns(
        f"""
        from support.containerd import Containerd
        from support.serve import Serve
        args = ["--registry", "oci:{root / "images"}", "--git", "{root / "git"}"]
        with Serve(args, tmp / "serve") as server:
            subprocess.run([sys.executable, "-m", "airbundle", "mirror-config", "{w.bundle}",
                            "-o", str(tmp / "mirrors"), "--registry", server.host, "--insecure",
                            "-q"], check=True)
            hosts = tmp / "mirrors" / "containerd" / "certs.d"
            with Containerd(tmp / "containerd") as ctd:
                pulled = ctd.ctr("images", "pull", "--hosts-dir", str(hosts),
                                 "--snapshotter", "native", "registry.example.com/team/hello:1.0")
                listed = ctd.ctr("images", "ls").stdout
            log = server.log_text()
        out = {{"rc": pulled.returncode, "err": pulled.stderr, "ls": listed, "log": log}}
        print(json.dumps(out))
        """,
        tmp_path,
        mounts=True,
    )
    assert result["rc"] == 0, result["err"]
    line = next(
        x for x in result["ls"].splitlines() if x.startswith("registry.example.com/team/hello:1.0")
    )
    assert digest in line
    # The requests went to serve, under the mapped name.
    assert "/v2/team/hello/manifests/1.0?ns=registry.example.com" in result["log"]


def test_docker_registry_as_a_pull_through_cache(
    served: tuple[World, Path, Serve], tmp_path: Path
) -> None:
    _, root, server = served
    digest = _carried(root)["registry.example.com/team/hello:1.0"]
    with PullThroughCache(tmp_path / "cache", server.url) as cache:
        assert skopeo_digest(f"docker://{cache.host}/team/hello:1.0") == digest
        copied = _skopeo(
            "copy",
            "--all",
            "--src-tls-verify=false",
            f"docker://{cache.host}/team/hello:1.0",
            f"dir:{tmp_path / 'copy'}",
        )
        assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "cache" / "storage" / "docker" / "registry" / "v2" / "blobs").is_dir()


def test_registries_conf_redirects_the_original_name(
    served: tuple[World, Path, Serve], tmp_path: Path
) -> None:
    w, root, _ = served
    carried = _carried(root)
    names = ["registry.example.com/team/hello:1.0", "example.com/team/app:2.1"]
    result = _in_netns(
        f"""
        import hashlib
        from support.serve import Serve
        with Serve(["--registry", "oci:{root / "images"}"], tmp / "serve") as server:
            subprocess.run([sys.executable, "-m", "airbundle", "mirror-config", "{w.bundle}",
                            "-o", str(tmp / "mirrors"), "--registry", server.host, "--insecure",
                            "-q"], check=True)
            out = {{}}
            for name in {names!r}:
                raw = subprocess.run(["skopeo", "--registries-conf",
                                      str(tmp / "mirrors" / "registries.conf"), "inspect", "--raw",
                                      "docker://" + name], capture_output=True, check=True).stdout
                out[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
            # Without the generated file the original names lead nowhere.
            plain = ["skopeo", "inspect", "--raw", "docker://" + {names[0]!r}]
            out["without"] = subprocess.run(plain, capture_output=True).returncode
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name in names:
        assert result[name] == carried[name]
    assert result["without"] != 0
