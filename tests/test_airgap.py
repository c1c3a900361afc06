"""The import side runs where there is no network: a user + network namespace with
only loopback (``unshare -rn``), as in scripts/airgap-demo, but driven from pytest.

The bundle is built outside from real servers (a registry and a git daemon on the
host's loopback); the only thing that crosses into the namespace is that file (and
the trusted public key). Inside, a fresh registry and git daemon start, ``airbundle
import`` pushes into them, and skopeo / git read back what landed. The test compares
that with what skopeo and git read from the source servers outside.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import KeyPair, hermetic, require_tool
from servers import (
    GitDaemon,
    Registry,
    assert_netns_isolated,
    git_env,
    netns_run,
    push_oci_layout,
    skopeo,
    skopeo_raw_manifest,
)

from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.keys import load_signing_key
from airbundle.ops.specfile import load_spec

TESTS_DIR = Path(__file__).resolve().parent
IMAGES = ("team/hello:1.0", "team/app:2.1")


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials, state and caches in tmp_path only; no proxies (inherited by netns_run)."""
    root = tmp_path / "env"
    hermetic(monkeypatch, root)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return root


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git(*args: str | Path, home: Path) -> str:
    proc = subprocess.run(
        ["git", *map(str, args)],
        env=git_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"git {args} failed:\n{proc.stderr}"
    return proc.stdout


def heads_and_tags(url: str, home: Path) -> dict[str, str]:
    refs = {}
    for line in git("ls-remote", "--refs", url, home=home).splitlines():
        oid, ref = line.split("\t")
        if ref.startswith(("refs/heads/", "refs/tags/")):
            refs[ref] = oid
    return refs


def export(tmp_path: Path, key: KeyPair, doc: dict[str, Any], name: str) -> ExportResult:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        json.dumps(
            {"apiVersion": "airbundle/v1", "kind": "BundleSpec", "metadata": {"name": name}, **doc}
        )
    )
    options = ExportOptions(
        output=tmp_path / "carried" / f"{name}.airbundle",
        keys=(load_signing_key(key.private, passphrase=None),),
    )
    return export_bundle(load_spec(spec), options)


def run_inside(script: str, config: dict[str, Any], tmp_path: Path, timeout: float) -> Any:
    """Run `script CONFIG.json` with this interpreter inside a fresh network namespace;
    the last line it prints is JSON."""
    config_file = tmp_path / "inside-config.json"
    config_file.write_text(json.dumps({**config, "tests_dir": str(TESTS_DIR)}))
    script_file = tmp_path / "inside.py"
    script_file.write_text(script)
    proc = netns_run([sys.executable, str(script_file), str(config_file)], timeout=timeout)
    assert proc.returncode == 0, f"inside the namespace:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the whole import path, offline -----------------------------------------

IMPORT_INSIDE = r"""
import errno, hashlib, json, socket, subprocess, sys
from pathlib import Path

config = json.loads(Path(sys.argv[1]).read_text())
sys.path.insert(0, config["tests_dir"])
from servers import GitDaemon, Registry, git_env, skopeo_raw_manifest  # noqa: E402

work = Path(config["work"])
out = {}
# The connected side's servers are not here: their ports on this loopback are closed.
for port in config["outside_ports"]:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        out.setdefault("reached_outside", []).append(port)
    except OSError as err:
        out.setdefault("outside_errors", []).append(err.errno)

genv = git_env(work / "git-home")
def git(*args):
    proc = subprocess.run(["git", *args], env=genv, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise SystemExit(f"git {args}: {proc.stderr}")
    return proc.stdout

with Registry(work / "registry") as reg, GitDaemon(work / "git" / "repos") as daemon:
    daemon.init_bare("gitops.git")
    proc = subprocess.run(
        [sys.executable, "-m", "airbundle", "import", config["bundle"],
         "--trust", config["trust"], "--registry", f"{reg.host}/mirror",
         "--git", f"git://{daemon.host}/{{name}}.git", "--report", str(work / "report.json")],
        capture_output=True, text=True, timeout=120,
    )
    out["rc"], out["stdout"], out["stderr"] = proc.returncode, proc.stdout, proc.stderr
    if proc.returncode == 0:
        digest = lambda raw: "sha256:" + hashlib.sha256(raw).hexdigest()
        out["tags"] = {r: digest(skopeo_raw_manifest(reg, f"mirror/{r}")) for r in config["images"]}
        out["by_digest"] = {
            d: digest(skopeo_raw_manifest(reg, f"mirror/team/hello@{d}"))
            for d in config["hello_manifests"]
        }
        url = daemon.url("gitops.git")
        out["refs"] = {
            ref: oid
            for oid, ref in (l.split("\t") for l in git("ls-remote", "--refs", url).splitlines())
        }
        git("clone", "--quiet", url, str(work / "clone"))
        git("-C", str(work / "clone"), "fsck", "--strict")
        out["head"] = git("-C", str(work / "clone"), "rev-parse", "HEAD").strip()
        out["report"] = json.loads((work / "report.json").read_text())
print(json.dumps(out))
"""


def test_import_runs_inside_a_network_namespace(
    registry: Registry,
    git_daemon: GitDaemon,
    hello_layout: Path,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    for tool in ("unshare", "docker-registry", "skopeo", "git"):
        require_tool(tool)
    home = tmp_path / "git-home"
    # Connected side: real servers seeded with the samples.
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    skopeo(
        [
            "copy",
            "--retry-times=0",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            f"docker-archive:{sample_tree / 'saved' / 'app.tar'}",
            f"docker://{registry.host}/team/app:2.1",
        ],
        registry=registry,
    )
    git_daemon.init_bare("gitops.git")
    source_url = git_daemon.url("gitops.git")
    git(
        "-C",
        sample_tree / "gitops",
        "push",
        "--quiet",
        source_url,
        "refs/heads/*:refs/heads/*",
        "refs/tags/*:refs/tags/*",
        home=home,
    )
    result = export(
        tmp_path,
        signing_key,
        {
            "images": [{"ref": f"{registry.host}/{r}"} for r in IMAGES],
            "repos": [{"name": "gitops", "url": source_url}],
        },
        "carried",
    )

    want_tags = {r: sha256(skopeo_raw_manifest(registry, r)) for r in IMAGES}
    index = json.loads(skopeo_raw_manifest(registry, "team/hello:1.0"))
    hello_manifests = [want_tags["team/hello:1.0"], *(m["digest"] for m in index["manifests"])]
    want_refs = heads_and_tags(source_url, home)

    # Disconnected side: everything below happens in the namespace.
    inside = run_inside(
        IMPORT_INSIDE,
        {
            "work": str(tmp_path / "inside"),
            "bundle": str(result.path),
            "trust": str(signing_key.public),
            "images": list(IMAGES),
            "hello_manifests": hello_manifests,
            "outside_ports": [registry.port, git_daemon.port],
        },
        tmp_path,
        timeout=120,
    )

    assert "reached_outside" not in inside, inside
    assert inside["rc"] == 0, inside["stderr"]
    assert inside["tags"] == want_tags
    assert inside["by_digest"] == {d: d for d in hello_manifests}
    assert inside["refs"] == want_refs == {r.name: r.target for r in result.manifest.repos[0].refs}
    assert inside["head"] == want_refs["refs/heads/main"]
    report = inside["report"]
    assert report["manifest_digest"] == str(result.manifest_digest)
    assert {i["source"]: i["digest"] for i in report["images"]} == {
        f"{registry.host}/{r}": d for r, d in want_tags.items()
    }


# --- nothing leaves the namespace, and trying to fails at once ----------------

UNREACHABLE_INSIDE = r"""
import json, subprocess, sys, time
from pathlib import Path

config = json.loads(Path(sys.argv[1]).read_text())
out = {}
for name, bundle, target in (
    ("registry", config["images_bundle"], ["--registry", "192.0.2.10:5000/mirror"]),
    ("git", config["repos_bundle"], ["--git", "git://192.0.2.10/{name}.git"]),
):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "airbundle", "import", bundle, "--trust", config["trust"],
         *target], capture_output=True, text=True, timeout=config["timeout"],
    )
    out[name] = {"rc": proc.returncode, "stderr": proc.stderr,
                 "seconds": time.monotonic() - started}
print(json.dumps(out))
"""


def test_nothing_leaves_the_namespace_and_imports_aimed_outside_fail_fast(
    registry: Registry,
    hello_layout: Path,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    message = assert_netns_isolated()
    assert "unreachable" in message.lower()

    push_oci_layout(registry, hello_layout, "0.9", "team/hello:0.9")
    images = export(
        tmp_path, signing_key, {"images": [{"ref": f"{registry.host}/team/hello:0.9"}]}, "images"
    )
    repos = export(
        tmp_path,
        signing_key,
        {"repos": [{"name": "gitops", "url": str(sample_tree / "gitops")}]},
        "repos",
    )
    limit = 30  # generous: a hang (a connect timeout, a prompt) would take far longer
    inside = run_inside(
        UNREACHABLE_INSIDE,
        {
            "images_bundle": str(images.path),
            "repos_bundle": str(repos.path),
            "trust": str(signing_key.public),
            "timeout": limit + 30,
        },
        tmp_path,
        timeout=2 * limit + 60,
    )

    for name, host in (("registry", "192.0.2.10:5000"), ("git", "192.0.2.10")):
        outcome = inside[name]
        assert outcome["rc"] == 3, (name, outcome)
        assert host in outcome["stderr"], (name, outcome)
        assert "unreachable" in outcome["stderr"].lower(), (name, outcome)
        assert "Traceback" not in outcome["stderr"]
        assert outcome["seconds"] < limit, (name, outcome)
