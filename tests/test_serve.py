"""`airbundle serve` against what import writes: the OCI distribution conformance
suite's pull and content-discovery cases, translated; live updates; auth, TLS;
git smart HTTP; the page at `/`; two instances over one folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST
from airbundle.ops.serve import ServeOptions, check_options
from support.chromium import chromium
from support.conformance import ANNOTATION, ARTIFACT_A, Conformance, conformance_layout
from support.crafting import World, world
from support.env import AIRBUNDLE, git_env, require_tool
from support.integration import starts_servers
from support.layout_writer import LayoutWriter
from support.legacy import LEGACY_PUB, LEGACY_SAMPLES
from support.net import TEST_CREDS, write_htpasswd
from support.netns import netns_run
from support.pki import CertAuthority
from support.serve import Serve, page_without_addresses
from support.serve_bundle import bundle_from_layout

MISSING = "sha256:" + hashlib.sha256(b"nothing").hexdigest()


@pytest.fixture(scope="module", params=["layout", "bundle"])
@starts_servers
def conformance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Serve, Conformance]]:
    """The same content served from an OCI layout and from a bundle of it."""
    root = tmp_path_factory.mktemp("conformance")
    data = conformance_layout(root / "layout")
    args = ["--registry", f"oci:{root / 'layout'}"]
    if request.param == "bundle":
        w = world(tmp_path_factory)
        bundle = bundle_from_layout(root / "layout", root / "conformance.airbundle", w.key)
        args = ["--bundle", str(bundle), "--trust", str(w.pub_path), "--cache-dir", str(root)]
    with Serve(args, root) as server:
        yield server, data


def _errors(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


# --- conformance: pull ------------------------------------------------------------


def test_pull_blobs(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    base = f"/v2/{c.name}/blobs/"
    for method in ("HEAD", "GET"):
        missing = server.get(base + MISSING, method=method)
        assert missing.status == 404
        found = server.get(base + c.config["digest"], method=method)
        assert found.status == 200
        assert found.headers["docker-content-digest"] == c.config["digest"]
        assert int(found.headers["content-length"]) == c.config["size"]
    assert _errors(server.get(base + MISSING).body) == ["BLOB_UNKNOWN"]
    layer = server.get(base + c.layer["digest"])
    assert layer.body == c.layer_data


def test_pull_manifests_by_tag_and_digest(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    accept = {"Accept": OCI_MANIFEST}
    for ref in (c.manifest.digest, c.tags[0]):
        for method in ("HEAD", "GET"):
            got = server.get(f"/v2/{c.name}/manifests/{ref}", method=method, headers=accept)
            assert got.status == 200
            assert got.headers["docker-content-digest"] == c.manifest.digest
            assert got.headers["content-type"] == OCI_MANIFEST
            assert int(got.headers["content-length"]) == c.manifest.size
            assert got.body == (c.manifest.data if method == "GET" else b"")
    for method in ("HEAD", "GET"):
        assert server.get(f"/v2/{c.name}/manifests/nonexistent", method=method).status == 404
    assert _errors(server.get(f"/v2/{c.name}/manifests/{MISSING}").body) == ["MANIFEST_UNKNOWN"]
    assert _errors(server.get("/v2/no/such/manifests/1").body) == ["NAME_UNKNOWN"]


def test_errors_are_spec_json_and_writes_are_unsupported(
    conformance: tuple[Serve, Conformance],
) -> None:
    server, c = conformance
    bad = server.get(
        f"/v2/{c.name}/manifests/sha256:totallywrong",
        method="PUT",
        headers={"Content-Type": OCI_MANIFEST},
        body=b"{}",
    )
    assert bad.status == 400
    assert _errors(bad.body) == ["DIGEST_INVALID"]
    for method, path in (
        ("PUT", f"/v2/{c.name}/manifests/{c.tags[0]}"),
        ("DELETE", f"/v2/{c.name}/manifests/{c.tags[0]}"),
        ("DELETE", f"/v2/{c.name}/blobs/{c.config['digest']}"),
        ("POST", f"/v2/{c.name}/blobs/uploads/"),
        ("PATCH", f"/v2/{c.name}/blobs/uploads/x"),
    ):
        got = server.get(path, method=method, body=b"")
        assert got.status == 405, (method, path)
        assert _errors(got.body) == ["UNSUPPORTED"]
    # The content is still there.
    assert server.get(f"/v2/{c.name}/manifests/{c.tags[0]}").status == 200


def test_ping_and_ranges(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    ping = server.get("/v2/")
    assert ping.status == 200
    assert ping.headers["docker-distribution-api-version"] == "registry/2.0"
    url = f"/v2/{c.name}/blobs/{c.layer['digest']}"
    size = len(c.layer_data)
    part = server.get(url, headers={"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.body == c.layer_data[100:200]
    tail = server.get(url, headers={"Range": "bytes=-7"})
    assert tail.body == c.layer_data[-7:]
    beyond = server.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"


# --- conformance: content discovery ---------------------------------------------


def test_tags_list_with_n_and_last(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    full = server.get(f"/v2/{c.name}/tags/list").json()
    assert full == {"name": c.name, "tags": c.tags}
    half = len(c.tags) // 2
    first = server.get(f"/v2/{c.name}/tags/list?n={half}")
    assert first.json()["tags"] == c.tags[:half]
    assert first.headers["link"] == (
        f'</v2/{c.name}/tags/list?n={half}&last={c.tags[half - 1]}>; rel="next"'
    )
    second = server.get(f"/v2/{c.name}/tags/list?n={half}&last={c.tags[half - 1]}")
    assert second.json()["tags"] == c.tags[half:]
    assert c.tags[half - 1] not in second.json()["tags"]
    assert "link" not in second.headers
    assert server.get("/v2/no/such/tags/list").status == 404


def test_catalog_pages(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    assert server.get("/v2/_catalog").json() == {"repositories": [c.name]}
    assert server.get("/v2/_catalog?n=0").json() == {"repositories": []}


def test_referrers(conformance: tuple[Serve, Conformance]) -> None:
    server, c = conformance
    base = f"/v2/{c.name}/referrers/"
    none = server.get(base + MISSING)
    assert none.status == 200
    assert none.headers["content-type"] == OCI_INDEX
    assert json.loads(none.body)["manifests"] == []
    every = server.get(base + c.manifest.digest)
    listed = json.loads(every.body)["manifests"]
    assert len(listed) == 5
    assert len({m["digest"] for m in listed}) == 5
    for m in listed:
        assert m["annotations"] == {ANNOTATION: c.referrers[m["digest"]]}
        assert m["artifactType"] in c.by_type
    filtered = server.get(base + c.manifest.digest + f"?artifactType={ARTIFACT_A}")
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert {m["digest"] for m in json.loads(filtered.body)["manifests"]} == c.by_type[ARTIFACT_A]
    orphan = json.loads(server.get(base + c.missing_subject).body)["manifests"]
    assert [m["digest"] for m in orphan] == [c.orphan.digest]


# --- an import while serving ---------------------------------------------------------


@pytest.mark.integration
def test_an_import_shows_up_without_restart_and_never_half_written(tmp_path: Path) -> None:
    """Blobs and manifests written, index.json not yet: nothing new is served.
    The atomic replacement of index.json makes the whole image appear at once."""
    layout = tmp_path / "layout"
    with Serve(["--registry", f"oci:{layout}"], tmp_path) as server:
        assert server.get("/v2/_catalog").json() == {"repositories": []}  # not there yet
        w = LayoutWriter(layout)
        first = w.image(b'{"n":1}', [b"layer one"])
        w.tag("registry.example.com/team/app:1", first)
        w.finish()
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["1"]
        # The second import is halfway: its blobs and manifest are in place.
        w2 = LayoutWriter(layout)
        second = w2.image(b'{"n":2}', [b"layer two"])
        w2.tag("registry.example.com/team/app:2", second)
        # A stray temporary index (what a killed writer leaves) is never read.
        (layout / ".airbundle-tmp-index.json").write_text("{not json")
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["1"]
        assert server.get(f"/v2/team/app/manifests/{second.digest}").status == 404
        w2.finish()
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["1", "2"]
        assert server.get("/v2/team/app/manifests/2").body == second.data


@pytest.mark.integration
def test_a_real_import_is_served_whole_while_it_runs(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Clients polling throughout an import only ever see complete images: every
    listed tag's manifest and every blob it names answer."""
    w = world(tmp_path_factory)
    layout = tmp_path / "layout"
    with Serve(["--registry", f"oci:{layout}"], tmp_path) as server:
        problems: list[str] = []
        done = threading.Event()
        seen: set[str] = set()

        def poll() -> None:
            while not done.is_set():
                for repo in server.get("/v2/_catalog").json()["repositories"]:
                    for tag in server.get(f"/v2/{repo}/tags/list").json()["tags"]:
                        seen.add(f"{repo}:{tag}")
                        m = server.get(f"/v2/{repo}/manifests/{tag}")
                        if m.status != 200:
                            problems.append(f"{repo}:{tag} manifest {m.status}")
                            continue
                        doc = json.loads(m.body)
                        for d in [
                            doc.get("config"),
                            *doc.get("layers", []),
                            *doc.get("manifests", []),
                        ]:
                            if d is None:
                                continue
                            kind = "manifests" if "manifests" in doc else "blobs"
                            got = server.get(f"/v2/{repo}/{kind}/{d['digest']}", method="HEAD")
                            if got.status != 200:
                                problems.append(f"{repo}:{tag} {d['digest']} {got.status}")

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            subprocess.run(
                [
                    *AIRBUNDLE,
                    "import",
                    str(w.bundle),
                    "--trust",
                    str(w.pub_path),
                    "--registry",
                    f"oci:{layout}",
                    "--git",
                    str(tmp_path / "git"),
                    "-q",
                ],
                check=True,
                timeout=120,
            )
        finally:
            done.set()
            poller.join()
        assert problems == []
        assert "team/hello:1.0" in {
            f"team/hello:{t}" for t in server.get("/v2/team/hello/tags/list").json()["tags"]
        }


# --- the samples, imported then served ----------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    w = world(tmp_path_factory)
    root = tmp_path_factory.mktemp("imported")
    state = root / "state"
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
            "-q",
        ],
        check=True,
        timeout=120,
        env={**_env(), "XDG_STATE_HOME": str(state)},
    )
    return w, root


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def _serve_args(root: Path) -> list[str]:
    return ["--registry", f"oci:{root / 'images'}", "--git", str(root / "git")]


@pytest.mark.integration
def test_git_clone_fetch_shallow_partial_and_no_push(
    imported: tuple[World, Path], tmp_path: Path
) -> None:
    require_tool("git")
    _, root = imported
    git_dir = tmp_path / "git"
    shutil.copytree(root / "git", git_dir)
    env = git_env(tmp_path / "home")
    with Serve(["--git", str(git_dir)], tmp_path) as server:
        url = f"{server.url}/git/gitops.git"

        def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
            )

        assert git("clone", "-q", url, str(tmp_path / "full")).returncode == 0
        served = git("--git-dir", str(git_dir / "gitops.git"), "rev-parse", "HEAD").stdout
        assert git("rev-parse", "HEAD", cwd=tmp_path / "full").stdout == served
        shallow = git("clone", "-q", "--depth", "1", url, str(tmp_path / "shallow"))
        assert shallow.returncode == 0
        assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "shallow").stdout.strip() == "1"
        partial = git("clone", "-q", "--filter=blob:none", url, str(tmp_path / "partial"))
        assert partial.returncode == 0, partial.stderr
        assert (
            git("config", "remote.origin.promisor", cwd=tmp_path / "partial").stdout.strip()
            == "true"
        )
        # A new commit published by an import is fetched without a restart.
        work = tmp_path / "work"
        git("clone", "-q", str(git_dir / "gitops.git"), str(work))
        (work / "new.txt").write_text("new\n")
        git("add", "new.txt", cwd=work)
        git("commit", "-qm", "new", cwd=work)
        head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
        assert git("fetch", "-q", "origin", cwd=tmp_path / "full").returncode == 0
        assert git("rev-parse", "origin/main", cwd=tmp_path / "full").stdout.strip() == head
        # Staging refs of an import in progress are never advertised.
        git(
            "--git-dir",
            str(git_dir / "gitops.git"),
            "update-ref",
            "refs/airbundle-incoming/x",
            head,
        )
        assert "airbundle-incoming" not in git("ls-remote", url).stdout
        # A repository an import is still creating (only staging refs) is not served.
        subprocess.run(
            ["git", "init", "-q", "--bare", str(git_dir / "half.git")], check=True, env=env
        )
        git(
            "--git-dir",
            str(git_dir / "half.git"),
            "fetch",
            "-q",
            "--no-tags",
            str(git_dir / "gitops.git"),
            "refs/heads/main:refs/airbundle-incoming/main",
        )
        assert git("ls-remote", f"{server.url}/git/half.git").returncode != 0
        # Pushes are refused.
        pushed = git("push", "origin", "HEAD:refs/heads/evil", cwd=tmp_path / "full")
        assert pushed.returncode != 0
        assert (
            "refs/heads/evil"
            not in git("--git-dir", str(git_dir / "gitops.git"), "for-each-ref").stdout
        )


@pytest.mark.integration
def test_htpasswd_guards_registry_git_and_page(
    imported: tuple[World, Path], tmp_path: Path
) -> None:
    _, root = imported
    htpasswd = write_htpasswd(tmp_path / "htpasswd", dict([TEST_CREDS]))
    with Serve([*_serve_args(root), "--htpasswd", str(htpasswd)], tmp_path) as server:
        anonymous = server.get("/v2/")
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic ")
        assert _errors(anonymous.body) == ["UNAUTHORIZED"]
        assert server.get("/v2/", creds=(TEST_CREDS[0], "wrong")).status == 401
        assert server.get("/v2/team/hello/tags/list", creds=TEST_CREDS).status == 200
        assert server.get("/", creds=None).status == 401
        env = git_env(tmp_path / "home")
        denied = subprocess.run(
            ["git", "ls-remote", f"{server.url}/git/gitops.git"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert denied.returncode != 0
        user, password = TEST_CREDS
        authed = f"http://{user}:{password}@{server.host}/git/gitops.git"
        assert (
            subprocess.run(
                ["git", "clone", "-q", authed, str(tmp_path / "c")], env=env, timeout=60
            ).returncode
            == 0
        )
        inspect = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--tls-verify=false",
                "--creds",
                f"{user}:{password}",
                f"docker://{server.host}/team/hello:1.0",
            ],
            capture_output=True,
            timeout=60,
        )
        assert inspect.returncode == 0, inspect.stderr


@pytest.mark.integration
def test_tls(imported: tuple[World, Path], tmp_path: Path) -> None:
    _, root = imported
    ca = CertAuthority(tmp_path / "ca")
    pair = ca.issue("serve")
    args = [*_serve_args(root), "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
    with Serve(args, tmp_path) as server:
        assert server.url.startswith("https://")
        certs = tmp_path / "certs"
        certs.mkdir()
        shutil.copy(ca.cert_file, certs / "ca.crt")
        got = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--cert-dir",
                str(certs),
                f"docker://{server.host}/team/hello:1.0",
            ],
            capture_output=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        env = git_env(tmp_path / "home", {"GIT_SSL_CAINFO": str(ca.cert_file)})
        cloned = subprocess.run(
            ["git", "clone", "-q", f"{server.url}/git/gitops.git", str(tmp_path / "c")],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert cloned.returncode == 0, cloned.stderr
        # Without the CA the client refuses the server.
        assert (
            subprocess.run(
                ["skopeo", "inspect", f"docker://{server.host}/team/hello:1.0"],
                capture_output=True,
                timeout=60,
            ).returncode
            != 0
        )


def test_plain_http_beyond_loopback_warns_with_client_settings(tmp_path: Path) -> None:
    warnings = check_options(ServeOptions(registry=f"oci:{tmp_path}", listen="0.0.0.0:5000"))
    assert any("insecure = true" in w and "hosts.toml" in w and "--tls-cert" in w for w in warnings)
    assert not any("TLS" in w for w in check_options(ServeOptions(registry=f"oci:{tmp_path}")))


@pytest.mark.integration
def test_in_a_loopback_only_namespace(imported: tuple[World, Path], tmp_path: Path) -> None:
    """serve listening on every interface of a namespace with nothing but lo:
    it warns, and skopeo and git pull from it there."""
    _, root = imported
    require_tool("unshare")
    script = f"""
set -e
{" ".join(AIRBUNDLE)} serve --registry oci:{root / "images"} --git {root / "git"} \
    --listen 0.0.0.0:5000 2>{tmp_path / "log"} &
pid=$!
for i in $(seq 100); do grep -q "serving on" {tmp_path / "log"} && break; sleep 0.1; done
skopeo inspect --tls-verify=false --raw docker://127.0.0.1:5000/team/hello:1.0 | sha256sum
HOME={tmp_path} git clone -q http://127.0.0.1:5000/git/gitops.git {tmp_path / "clone"}
kill $pid
"""
    proc = netns_run(["sh", "-c", script], timeout=120)
    assert proc.returncode == 0, proc.stderr + (tmp_path / "log").read_text()
    index = json.loads((root / "images" / "index.json").read_text())
    digest = next(
        m["digest"]
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"].endswith("hello:1.0")
    )
    assert proc.stdout.split()[0] == digest.split(":")[1]
    assert (tmp_path / "clone" / ".git").is_dir()
    assert "insecure = true" in (tmp_path / "log").read_text()


@pytest.mark.integration
def test_two_instances_answer_the_same(imported: tuple[World, Path], tmp_path: Path) -> None:
    _, root = imported
    with (
        Serve(_serve_args(root), tmp_path / "a") as a,
        Serve(_serve_args(root), tmp_path / "b") as b,
    ):
        paths = [
            "/v2/_catalog",
            "/v2/team/hello/tags/list",
            "/v2/team/hello/manifests/1.0",
            "/v2/team/app/manifests/2.1",
        ]
        manifest = json.loads(a.get("/v2/team/app/manifests/2.1").body)
        paths += [
            f"/v2/team/app/blobs/{d['digest']}" for d in [manifest["config"], *manifest["layers"]]
        ]
        for path in paths:
            first, second = a.get(path), b.get(path)
            assert (first.status, first.body) == (second.status, second.body), path
            assert first.status == 200
        pages = [page_without_addresses(s) for s in (a, b)]
        assert pages[0] == pages[1]


@pytest.mark.integration
def test_the_page_lists_images_repos_and_history(
    imported: tuple[World, Path], tmp_path: Path
) -> None:
    w, root = imported
    with Serve(_serve_args(root), tmp_path, env={"XDG_STATE_HOME": str(root / "state")}) as server:
        data = server.get("/", headers={"Accept": "application/json"}).json()
        hello = next(i for i in data["images"] if i["tag"] == "1.0")
        assert hello["pull"] == f"{server.host}/team/hello:1.0"
        assert hello["platforms"] == ["linux/amd64", "linux/arm64"]
        assert hello["size"] > 0
        repo = data["repos"][0]
        assert repo["name"] == "gitops"
        assert {r["ref"] for r in repo["refs"]} >= {"refs/heads/main"}
        targets = {h["target"].split("=")[0] for h in data["history"]}
        assert targets == {"images", "git"}
        assert all(h["bundle"] == w.export.manifest.bundle.name for h in data["history"])
        dom = chromium(server.url + "/", tmp_path / "profile", "--dump-dom")
        assert f"{server.host}/team/hello:1.0" in dom
        assert "linux/amd64, linux/arm64" in dom
        assert f"git clone {server.url}/git/gitops.git" in dom
        assert "refs/heads/main" in dom
        assert w.export.manifest.bundle.id in dom


@pytest.mark.integration
def test_a_tampered_manifest_is_left_out_and_logged(
    imported: tuple[World, Path], tmp_path: Path
) -> None:
    _, root = imported
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    index = json.loads((images / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"].endswith("app:2.1")
    )
    path = images / "blobs" / "sha256" / entry["digest"].split(":")[1]
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    with Serve(["--registry", f"oci:{images}"], tmp_path) as server:
        assert server.get("/v2/_catalog").json()["repositories"] == ["team/hello"]
        assert server.get("/v2/team/app/manifests/2.1").status == 404
        assert "does not match its digest" in server.log_text()


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AIRBUNDLE, "serve", *args], capture_output=True, text=True, timeout=60
        )

    nothing = run()
    assert nothing.returncode == 2 and "nothing to serve" in nothing.stderr
    registry = run("--registry", "registry.local:5000")
    assert registry.returncode == 2 and "oci:DIR" in registry.stderr
    untrusted = run("--bundle", str(tmp_path / "b.airbundle"))
    assert untrusted.returncode == 2 and "no trusted keys" in untrusted.stderr
    both = run(
        "--bundle", str(LEGACY_SAMPLES), "--trust", str(LEGACY_PUB),
        "--registry", f"oci:{tmp_path / 'x'}",
    )  # fmt: skip
    assert both.returncode == 2 and "not with --registry or --git" in both.stderr, both.stderr
    stray = run("--registry", f"oci:{tmp_path / 'x'}", "--trust", str(LEGACY_PUB))
    assert stray.returncode == 2 and "go with --bundle" in stray.stderr
    (tmp_path / "h").write_text("alice:$apr1$abc$defghijklmnopqrstuvwx\n")
    md5 = run("--registry", f"oci:{tmp_path / 'x'}", "--htpasswd", str(tmp_path / "h"))
    assert md5.returncode == 2 and "not a bcrypt hash" in md5.stderr
    half = run("--registry", f"oci:{tmp_path}", "--tls-cert", str(tmp_path / "c"))
    assert half.returncode == 2 and "go together" in half.stderr
