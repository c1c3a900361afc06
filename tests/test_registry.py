"""Images pulled from real registries on export and pushed into real registries on import.

Every registry here is CNCF distribution (``docker-registry``) on 127.0.0.1, seeded
and judged by skopeo: a digest is the sha256 of the manifest bytes skopeo reads back
(``skopeo inspect --raw``), never what airbundle says about itself. The registry's own
access log is the judge of what was uploaded, skipped or mounted.

Credentials never come from the user's files: every test runs with HOME,
DOCKER_CONFIG, REGISTRY_AUTH_FILE, XDG_* pointing into its tmp_path, and with the
proxy variables cleared unless the test is about proxies.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airbundle.adapters.registry.transport import TLSConfig, Transport
from airbundle.errors import SourceError, TargetError, UsageError
from airbundle.limits import Limits
from airbundle.ops.inventory import take_inventory
from support.bundles import export_spec, import_, sha256, write_spec
from support.env import hermetic
from support.keys import KeyPair
from support.net import TEST_CREDS, Creds, free_port
from support.oci import OCI_INDEX
from support.proxy import RecordingProxy
from support.registry import Registry
from support.skopeo import push_oci_layout, skopeo, skopeo_raw_manifest

# One line of distribution's combined access log: "METHOD URI HTTP/1.1" STATUS
ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.1" (\d{3})')


# --- hermetic environment ---------------------------------------------------


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every place airbundle (and skopeo) could find credentials points into tmp_path."""
    root = tmp_path / "env"
    hermetic(monkeypatch, root)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return root


# --- helpers ----------------------------------------------------------------


def raw_digest(reg: Registry, ref: str, creds: Creds | None = None) -> str:
    return sha256(skopeo_raw_manifest(reg, ref, creds=creds))


def access_log(reg: Registry) -> list[tuple[str, str, int]]:
    text = reg.log.read_text(errors="replace")
    return [(m[1], m[2], int(m[3])) for m in ACCESS.finditer(text)]


def wait_for_log(reg: Registry, predicate: Callable[[list[tuple[str, str, int]]], bool]) -> None:
    """The access log line is written just after the response: allow it a moment."""
    deadline = time.monotonic() + 3
    while not predicate(access_log(reg)):
        assert time.monotonic() < deadline, reg.log_tail(30)
        time.sleep(0.05)


def log_barrier(reg: Registry) -> str:
    """Ask the registry something of our own and wait until its access log shows it:
    the requests answered before it have been logged by then (each is logged as it is
    answered). Returns the barrier's path, to leave it out of what a test counts."""
    path = f"/v2/barrier-{secrets.token_hex(6)}/tags/list"
    reg.request("GET", path)
    wait_for_log(reg, lambda log: any(p == path for _, p, _ in log))
    return path


def logged_since(reg: Registry, start: int, *barriers: str) -> list[tuple[str, str, int]]:
    """The access log from line ``start`` on, without the barriers' own lines."""
    return [line for line in access_log(reg)[start:] if line[1] not in barriers]


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airbundle", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else dict(os.environ),
        check=False,
    )


def copy_out(reg: Registry, ref: str, dest: Path, creds: Creds | None = None) -> bytes:
    """`skopeo copy --all` from the registry into dir:DEST; the top manifest's bytes."""
    auth = [f"--src-creds={creds[0]}:{creds[1]}"] if creds else ["--src-no-creds"]
    tls = [f"--src-cert-dir={reg.cert_dir}"] if reg.cert_dir else ["--src-tls-verify=false"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    skopeo(
        [
            "copy",
            "--all",
            "--retry-times=0",
            *tls,
            *auth,
            f"docker://{reg.host}/{ref}",
            f"dir:{dest}",
        ],
        registry=reg,
    )
    return (dest / "manifest.json").read_bytes()


def index_children(raw: bytes) -> list[str]:
    return [m["digest"] for m in json.loads(raw)["manifests"]]


def docker_auth_json(host: str, creds: Creds) -> str:
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}})


# --- seeded source ----------------------------------------------------------


def seed(reg: Registry, hello_layout: Path, sample_tree: Path, creds: Creds | None = None) -> None:
    """team/hello:1.0 (two-platform index), team/hello:0.9 (one manifest, shares layers),
    team/app:2.1 (a docker-archive pushed with skopeo: Docker schema 2)."""
    push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", creds=creds)
    push_oci_layout(reg, hello_layout, "0.9", "team/hello:0.9", creds=creds)
    auth = [f"--dest-creds={creds[0]}:{creds[1]}"] if creds else ["--dest-no-creds"]
    tls = [f"--dest-cert-dir={reg.cert_dir}"] if reg.cert_dir else ["--dest-tls-verify=false"]
    skopeo(
        [
            "copy",
            "--retry-times=0",
            *tls,
            *auth,
            f"docker-archive:{sample_tree / 'saved' / 'app.tar'}",
            f"docker://{reg.host}/team/app:2.1",
        ],
        registry=reg,
    )


@pytest.fixture
def source(registry: Registry, hello_layout: Path, sample_tree: Path) -> Registry:
    seed(registry, hello_layout, sample_tree)
    return registry


IMAGES = ("team/hello:1.0", "team/hello:0.9", "team/app:2.1")


def refs(reg: Registry, *repo_tags: str) -> list[str]:
    return [f"{reg.host}/{r}" for r in repo_tags]


# --- export from a registry, import into another -----------------------------


def test_export_from_registry_import_under_prefix_keeps_every_digest(
    source: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, *IMAGES))
    report_file = tmp_path / "report" / "import.json"
    import_(result.path, signing_key, registry=f"{target_registry.host}/mirror", report=report_file)

    for repo_tag in IMAGES:
        want = raw_digest(source, repo_tag)
        got_raw = skopeo_raw_manifest(target_registry, f"mirror/{repo_tag}")
        assert sha256(got_raw) == want, repo_tag
        # skopeo can pull the whole image (every platform) back out of the target.
        folder = tmp_path / "pulled" / repo_tag.replace("/", "_").replace(":", "_")
        copied = copy_out(target_registry, f"mirror/{repo_tag}", folder)
        assert sha256(copied) == want
    # The index and each platform manifest, fetched by digest, are the source's bytes.
    index_raw = skopeo_raw_manifest(source, "team/hello:1.0")
    assert json.loads(index_raw)["mediaType"] == OCI_INDEX
    children = index_children(index_raw)
    assert len(children) == 2
    for digest in [sha256(index_raw), *children]:
        assert raw_digest(target_registry, f"mirror/team/hello@{digest}") == digest
        assert skopeo_raw_manifest(target_registry, f"mirror/team/hello@{digest}") == (
            skopeo_raw_manifest(source, f"team/hello@{digest}")
        )
    # The report maps every source reference to where it landed, with its digest.
    report = json.loads(report_file.read_text())
    assert report["manifest_digest"] == str(result.manifest_digest)
    mapping = {i["source"]: (i["target"], i["digest"]) for i in report["images"]}
    assert mapping == {
        f"{source.host}/{r}": (f"{target_registry.host}/mirror/{r}", raw_digest(source, r))
        for r in IMAGES
    }


def test_reimport_is_a_noop(
    source: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, *IMAGES))
    first = import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    digests = {r: raw_digest(target_registry, f"mirror/{r}") for r in IMAGES}
    blobs = len([m for m in result.manifest.members if m.path.startswith("images/blobs/")])
    manifests = 5  # hello 1.0 index + 2 platform manifests, hello 0.9, app 2.1
    assert first.blobs_written == blobs - manifests == 9 and first.blobs_present == 0
    assert not first.noop

    # The same bundle again: recognised from the import state; the registry is only
    # asked, one HEAD per tag, whether it still holds what the state remembers.
    first_done = log_barrier(target_registry)
    before = len(access_log(target_registry))
    second = import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    assert second.noop and second.blobs_written == 0
    second_done = log_barrier(target_registry)
    asked = logged_since(target_registry, before, first_done, second_done)
    assert sorted(path for method, path, _ in asked if method == "HEAD") == sorted(
        f"/v2/mirror/{r.replace(':', '/manifests/')}" for r in IMAGES
    )
    assert [method for method, _, _ in asked if method != "HEAD"] == []

    # Without that state (another importer host, say): every blob is found by HEAD,
    # nothing is uploaded, and the digests are what they were.
    third = import_(
        result.path,
        signing_key,
        registry=f"{target_registry.host}/mirror",
        state_dir=tmp_path / "other-state",
    )
    assert not third.noop
    assert third.blobs_written == 0 and third.blobs_present == first.blobs_written
    assert {r: raw_digest(target_registry, f"mirror/{r}") for r in IMAGES} == digests
    third_done = log_barrier(target_registry)
    again = logged_since(target_registry, before, first_done, second_done, third_done)
    # Upload sessions are only started and cancelled (the import's preflight:
    # can a push start there?); no byte is sent.
    uploads = [line for line in again if "/blobs/uploads/" in line[1]]
    assert not [line for line in uploads if line[0] in ("PUT", "PATCH")], again
    assert len([line for line in again if line[0] == "HEAD" and "/blobs/" in line[1]]) >= 9


def test_inventory_of_a_registry_lists_every_digest_imported_page_by_page(
    source: Registry,
    target_registry: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, *IMAGES))
    import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    # Outside the prefix: listed by the catalog, left out of the inventory.
    push_oci_layout(target_registry, hello_layout, "0.9", "elsewhere/hello:0.9")

    inventory = take_inventory(
        registry=f"{target_registry.host}/mirror",
        git_target=None,
        repo_names=[],
        limits=Limits(registry_page_entries=1),
    )

    carried = {m.digest for m in result.manifest.members if m.path.startswith("images/blobs/")}
    assert set(inventory.blobs) == carried
    pages = [uri for method, uri, _ in access_log(target_registry) if "/v2/_catalog" in uri]
    assert len(pages) >= 3 and any("last=" in uri for uri in pages), pages


def test_import_skips_blobs_the_target_already_has(
    source: Registry,
    target_registry: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    push_oci_layout(target_registry, hello_layout, "0.9", "mirror/team/hello:0.9")
    manifest_09 = json.loads(skopeo_raw_manifest(target_registry, "mirror/team/hello:0.9"))
    present = {manifest_09["config"]["digest"], *(la["digest"] for la in manifest_09["layers"])}
    before = len(access_log(target_registry))

    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:1.0", "team/hello:0.9"))
    report = import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")

    assert report.blobs_present == len(present) == 3
    assert report.blobs_written == 3  # the 1.0 configs and the arm64 layer
    log = access_log(target_registry)[before:]
    heads = {p.rsplit("/", 1)[1] for m, p, s in log if m == "HEAD" and "/blobs/" in p and s == 200}
    assert present <= heads
    uploaded = {
        re.search(r"digest=(sha256%3A[0-9a-f]{64})", p)[1].replace("%3A", ":")  # type: ignore[index]
        for m, p, s in log
        if m == "PUT" and "/blobs/uploads/" in p and s == 201
    }
    assert len(uploaded) == 3 and not uploaded & present
    for repo_tag in ("team/hello:1.0", "team/hello:0.9"):
        assert raw_digest(target_registry, f"mirror/{repo_tag}") == raw_digest(source, repo_tag)


def test_shared_layers_are_mounted_across_target_repositories(
    registry: Registry,
    target_registry: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    # The same layers under two repositories: 0.9 reuses both amd64 layers of 1.0.
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    push_oci_layout(registry, hello_layout, "0.9", "team/other:0.9")
    result = export_spec(tmp_path, signing_key, *refs(registry, "team/hello:1.0", "team/other:0.9"))
    report = import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")

    manifest_09 = json.loads(skopeo_raw_manifest(registry, "team/other:0.9"))
    shared = {la["digest"] for la in manifest_09["layers"]}
    assert report.blobs_written == 6  # distinct blobs, each counted once
    assert report.blobs_present == 0
    wait_for_log(target_registry, lambda log: any("mount=" in p for _, p, _ in log))
    mounts = [(p, s) for m, p, s in access_log(target_registry) if m == "POST" and "mount=" in p]
    mounted = {
        re.search(r"mount=(sha256%3A[0-9a-f]{64})", p)[1].replace("%3A", ":")  # type: ignore[index]
        for p, s in mounts
        if s == 201
    }
    assert mounted == shared, mounts
    assert all("from=mirror%2Fteam%2F" in p for p, _ in mounts)
    for src, dst in (
        ("team/hello:1.0", "mirror/team/hello:1.0"),
        ("team/other:0.9", "mirror/team/other:0.9"),
    ):
        assert raw_digest(target_registry, dst) == raw_digest(registry, src)
    copy_out(target_registry, "mirror/team/other:0.9", tmp_path / "other")


# --- references pinned by digest ----------------------------------------------


def test_digest_pinned_reference_round_trips_without_a_tag(
    source: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    digest = raw_digest(source, "team/hello:1.0")
    result = export_spec(tmp_path, signing_key, f"{source.host}/team/hello@{digest}")
    (image,) = result.manifest.images
    assert str(image.digest) == digest
    report = import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    assert report.images[0]["target"] == f"{target_registry.host}/mirror/team/hello@{digest}"

    assert raw_digest(target_registry, f"mirror/team/hello@{digest}") == digest
    copied = copy_out(target_registry, f"mirror/team/hello@{digest}", tmp_path / "pulled")
    assert sha256(copied) == digest
    tags = target_registry.request("GET", "/v2/mirror/team/hello/tags/list")
    assert tags.status == 404 or not tags.json().get("tags"), tags  # no tag was made
    assert target_registry.request("GET", "/v2/_catalog").json() == {
        "repositories": ["mirror/team/hello"]
    }


def test_wrong_pinned_digest_is_a_source_error_naming_the_image(
    source: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    wrong = "sha256:" + "0" * 63 + "1"
    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, f"{source.host}/team/hello@{wrong}")
    assert f"{source.host}/team/hello@{wrong}" in caught.value.message
    assert "not found" in caught.value.message
    assert not (tmp_path / "out" / "b.airbundle").exists()


# --- platform subsets ---------------------------------------------------------


def test_platform_subset_replaces_the_index_and_warns_about_the_original_digest(
    source: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    original_raw = skopeo_raw_manifest(source, "team/hello:1.0")
    original = sha256(original_raw)
    by_arch = {
        m["platform"]["architecture"]: m["digest"] for m in json.loads(original_raw)["manifests"]
    }
    result = export_spec(
        tmp_path,
        signing_key,
        {"ref": f"{source.host}/team/hello:1.0", "platforms": ["linux/arm64"]},
    )
    (image,) = result.manifest.images
    assert str(image.source_digest) == original
    assert image.digest != image.source_digest
    (warning,) = result.warnings
    assert original in warning and str(image.digest) in warning

    import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    tagged = skopeo_raw_manifest(target_registry, "mirror/team/hello:1.0")
    assert sha256(tagged) == str(image.digest) != original
    assert index_children(tagged) == [by_arch["arm64"]]
    # The arm64 manifest keeps its digest: pulling it by the source's digest works.
    arm = skopeo_raw_manifest(target_registry, f"mirror/team/hello@{by_arch['arm64']}")
    assert sha256(arm) == by_arch["arm64"]
    # The original index (and the amd64 manifest) never reached the target.
    for missing in (original, by_arch["amd64"]):
        resp = target_registry.request(
            "GET", f"/v2/mirror/team/hello/manifests/{missing}", headers={"Accept": OCI_INDEX}
        )
        assert resp.status == 404, (missing, resp)


# --- repository mapping --------------------------------------------------------


@pytest.mark.parametrize("keep_source_host", [False, True], ids=["default", "keep-source-host"])
def test_repository_mapping(
    source: Registry,
    target_registry: Registry,
    signing_key: KeyPair,
    tmp_path: Path,
    keep_source_host: bool,
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:0.9"))
    import_(
        result.path,
        signing_key,
        registry=f"{target_registry.host}/mirror",
        keep_source_host=keep_source_host,
    )
    repo = f"mirror/127.0.0.1-{source.port}/team/hello" if keep_source_host else "mirror/team/hello"
    assert target_registry.request("GET", "/v2/_catalog").json() == {"repositories": [repo]}
    assert raw_digest(target_registry, f"{repo}:0.9") == raw_digest(source, "team/hello:0.9")


def test_two_sources_landing_in_one_repository_are_refused_before_any_push(
    source: Registry,
    target_registry: Registry,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    with Registry(tmp_path / "second") as second:
        push_oci_layout(second, hello_layout, "0.9", "team/hello:2.0")
        result = export_spec(
            tmp_path,
            signing_key,
            f"{source.host}/team/hello:1.0",
            f"{second.host}/team/hello:2.0",
        )
    with pytest.raises(UsageError) as caught:
        import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    message = caught.value.message
    assert f"{source.host}/team/hello" in message and f"{second.host}/team/hello" in message
    assert f"{target_registry.host}/mirror/team/hello" in message
    assert target_registry.request("GET", "/v2/_catalog").json() == {"repositories": []}
    assert not [p for _, p, _ in access_log(target_registry) if p.startswith("/v2/mirror")]


# --- authentication -------------------------------------------------------------


def helper_script(folder: Path, creds: Creds) -> Path:
    """An executable docker-credential-airtest answering `get` (and logging the host)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "docker-credential-airtest"
    log = folder / "helper.log"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || { echo "unsupported: $1" >&2; exit 1; }\n'
        "read -r host\n"
        f'printf "%s\\n" "$host" >> "{log}"\n'
        f'printf \'{{"ServerURL":"%s","Username":"{creds[0]}","Secret":"{creds[1]}"}}\' "$host"\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("where", ["registry-auth-file", "docker-config", "credential-helper"])
def test_basic_auth_credentials_for_export_and_import(
    auth_registry: Registry,
    hello_layout: Path,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    reg = auth_registry
    seed(reg, hello_layout, sample_tree, creds=TEST_CREDS)
    if where == "registry-auth-file":
        Path(os.environ["REGISTRY_AUTH_FILE"]).write_text(docker_auth_json(reg.host, TEST_CREDS))
    elif where == "docker-config":
        (env / "docker" / "config.json").write_text(docker_auth_json(reg.host, TEST_CREDS))
    else:
        helper = helper_script(tmp_path / "bin", TEST_CREDS)
        monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
        (env / "docker" / "config.json").write_text(
            json.dumps({"credHelpers": {reg.host: "airtest"}})
        )

    # One image: several at once trip the race in test_basic_auth_with_parallel_image_planning.
    result = export_spec(tmp_path, signing_key, *refs(reg, "team/hello:1.0"))
    import_(result.path, signing_key, registry=f"{reg.host}/mirror")
    want = raw_digest(reg, "team/hello:1.0", creds=TEST_CREDS)
    assert str(result.manifest.images[0].digest) == want
    assert raw_digest(reg, "mirror/team/hello:1.0", creds=TEST_CREDS) == want
    copy_out(reg, "mirror/team/hello:1.0", tmp_path / "pulled", creds=TEST_CREDS)
    if where == "credential-helper":
        asked = (tmp_path / "bin" / "helper.log").read_text().split()
        assert asked and set(asked) == {reg.host}


def test_basic_auth_with_parallel_image_planning(
    auth_registry: Registry,
    hello_layout: Path,
    sample_tree: Path,
    signing_key: KeyPair,
    tmp_path: Path,
) -> None:
    reg = auth_registry
    seed(reg, hello_layout, sample_tree, creds=TEST_CREDS)
    Path(os.environ["REGISTRY_AUTH_FILE"]).write_text(docker_auth_json(reg.host, TEST_CREDS))
    # A race: three exports in a row (each planning three images at once) make a
    # pass by luck vanishingly unlikely (each export alone fails ~95% of the time).
    for attempt in range(3):
        result = export_spec(tmp_path, signing_key, *refs(reg, *IMAGES), name=f"b{attempt}")
        got = {str(i.ref).split("/", 1)[1]: str(i.digest) for i in result.manifest.images}
        assert got == {r: raw_digest(reg, r, creds=TEST_CREDS) for r in IMAGES}


def test_missing_credentials_on_export_say_authentication_and_name_the_host(
    auth_registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(auth_registry, hello_layout, "0.9", "team/hello:0.9", creds=TEST_CREDS)
    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, *refs(auth_registry, "team/hello:0.9"))
    assert "authentication" in caught.value.message
    assert auth_registry.host in caught.value.message
    assert not (tmp_path / "out" / "b.airbundle").exists()


def test_missing_credentials_on_import_exit_3_naming_the_host(
    source: Registry, auth_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:0.9"))
    proc = cli(
        "import",
        result.path,
        "--trust",
        signing_key.public,
        "--registry",
        f"{auth_registry.host}/mirror",
    )
    assert proc.returncode == 3, proc.stderr
    assert "authentication" in proc.stderr and auth_registry.host in proc.stderr
    catalog = auth_registry.request("GET", "/v2/_catalog", creds=TEST_CREDS).json()
    assert catalog == {"repositories": []}
    with pytest.raises(TargetError, match="authentication"):
        import_(result.path, signing_key, registry=f"{auth_registry.host}/mirror")


def test_token_auth_export_asks_for_pull(
    token_registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    reg = token_registry
    push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", creds=TEST_CREDS)
    Path(os.environ["REGISTRY_AUTH_FILE"]).write_text(docker_auth_json(reg.host, TEST_CREDS))
    before = len(reg.token_requests)
    result = export_spec(tmp_path, signing_key, *refs(reg, "team/hello:1.0"))
    assert str(result.manifest.images[0].digest) == raw_digest(
        reg, "team/hello:1.0", creds=TEST_CREDS
    )
    asked = reg.token_requests[before:]
    assert any(
        r.auth_given and r.status == 200 and "repository:team/hello:pull" in r.scopes for r in asked
    ), asked


def test_token_auth_import_asks_for_pull_and_push(
    token_registry: Registry, source: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    reg = token_registry
    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:1.0"))
    Path(os.environ["REGISTRY_AUTH_FILE"]).write_text(docker_auth_json(reg.host, TEST_CREDS))
    before = len(reg.token_requests)
    import_(result.path, signing_key, registry=f"{reg.host}/mirror")
    assert raw_digest(reg, "mirror/team/hello:1.0", creds=TEST_CREDS) == raw_digest(
        source, "team/hello:1.0"
    )
    asked = reg.token_requests[before:]
    assert any(
        r.auth_given and r.status == 200 and "repository:mirror/team/hello:pull,push" in r.scopes
        for r in asked
    ), asked


# --- TLS ------------------------------------------------------------------------------


def test_tls_registry_with_the_ca_file(
    tls_registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(tls_registry, hello_layout, "1.0", "team/hello:1.0")
    transport = Transport(TLSConfig(ca_file=tls_registry.ca_file))
    result = export_spec(
        tmp_path, signing_key, *refs(tls_registry, "team/hello:1.0"), transport=transport
    )
    import_(
        result.path,
        signing_key,
        registry=f"{tls_registry.host}/mirror",
        transport=Transport(TLSConfig(ca_file=tls_registry.ca_file)),
    )
    want = raw_digest(tls_registry, "team/hello:1.0")  # skopeo verifies with cert_dir/ca.crt
    assert str(result.manifest.images[0].digest) == want
    assert raw_digest(tls_registry, "mirror/team/hello:1.0") == want
    # Never downgraded to plain HTTP: every request the registry logged came over TLS.
    assert "http: TLS handshake error" not in tls_registry.log.read_text()


def test_tls_registry_without_the_ca_names_tls_and_ca_file(
    tls_registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(tls_registry, hello_layout, "0.9", "team/hello:0.9")
    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, *refs(tls_registry, "team/hello:0.9"))
    text = caught.value.diagnostics()
    assert "TLS" in text and "--ca-file" in text and tls_registry.host in text
    assert "CERTIFICATE_VERIFY_FAILED" in text


def test_ssl_cert_file_is_honoured_by_the_cli(
    tls_registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(tls_registry, hello_layout, "0.9", "team/hello:0.9")
    spec = write_spec(tmp_path / "spec.yaml", f"{tls_registry.host}/team/hello:0.9")
    bundle = tmp_path / "cli.airbundle"
    args = ("export", spec, "-o", bundle, "--key", signing_key.private, "--no-cache")
    without = cli(*args)
    assert without.returncode == 3 and "--ca-file" in without.stderr, without.stderr
    env = {**os.environ, "SSL_CERT_FILE": str(tls_registry.ca_file)}
    exported = cli(*args, env=env)
    assert exported.returncode == 0, exported.stderr
    imported = cli(
        "import",
        bundle,
        "--trust",
        signing_key.public,
        "--registry",
        f"{tls_registry.host}/mirror",
        env=env,
    )
    assert imported.returncode == 0, imported.stderr
    assert raw_digest(tls_registry, "mirror/team/hello:0.9") == raw_digest(
        tls_registry, "team/hello:0.9"
    )


@pytest.mark.integration
def test_client_certificates_via_the_cli(
    hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    with Registry(tmp_path / "mtls", tls=True, client_ca=True) as reg:
        assert reg.ca_file is not None
        assert reg.client_cert is not None and reg.client_key is not None
        push_oci_layout(reg, hello_layout, "0.9", "team/hello:0.9")
        spec = write_spec(tmp_path / "spec.yaml", f"{reg.host}/team/hello:0.9")
        bundle = tmp_path / "mtls.airbundle"
        base = (
            "export",
            spec,
            "-o",
            bundle,
            "--key",
            signing_key.private,
            "--no-cache",
            "--ca-file",
            reg.ca_file,
        )
        refused = cli(*base)
        assert refused.returncode == 3, refused.stderr
        assert "TLS" in refused.stderr and reg.host in refused.stderr
        assert not bundle.exists()
        ok = cli(*base, "--cert", reg.client_cert, "--cert-key", reg.client_key)
        assert ok.returncode == 0, ok.stderr
        imported = cli(
            "import",
            bundle,
            "--trust",
            signing_key.public,
            "--registry",
            f"{reg.host}/mirror",
            "--ca-file",
            reg.ca_file,
            "--cert",
            reg.client_cert,
            "--cert-key",
            reg.client_key,
        )
        assert imported.returncode == 0, imported.stderr
        assert raw_digest(reg, "mirror/team/hello:0.9") == raw_digest(reg, "team/hello:0.9")


# --- proxies -------------------------------------------------------------------------


def test_https_proxy_tunnels_to_the_tls_registry(
    tls_registry: Registry,
    recording_proxy: RecordingProxy,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    push_oci_layout(tls_registry, hello_layout, "0.9", "team/hello:0.9")
    monkeypatch.setenv("HTTPS_PROXY", recording_proxy.url)
    transport = Transport(TLSConfig(ca_file=tls_registry.ca_file))
    result = export_spec(
        tmp_path, signing_key, *refs(tls_registry, "team/hello:0.9"), transport=transport
    )
    assert str(result.manifest.images[0].digest) == raw_digest(tls_registry, "team/hello:0.9")
    lines = [r.line for r in recording_proxy.requests]
    assert lines and set(lines) == {f"CONNECT {tls_registry.host}"}, lines


def test_no_proxy_bypasses_the_proxy(
    tls_registry: Registry,
    recording_proxy: RecordingProxy,
    hello_layout: Path,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    push_oci_layout(tls_registry, hello_layout, "0.9", "team/hello:0.9")
    monkeypatch.setenv("HTTPS_PROXY", recording_proxy.url)
    monkeypatch.setenv("HTTP_PROXY", recording_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    transport = Transport(TLSConfig(ca_file=tls_registry.ca_file))
    result = export_spec(
        tmp_path, signing_key, *refs(tls_registry, "team/hello:0.9"), transport=transport
    )
    assert str(result.manifest.images[0].digest) == raw_digest(tls_registry, "team/hello:0.9")
    assert recording_proxy.requests == []


def test_http_proxy_carries_plain_http_export_and_import(
    source: Registry,
    target_registry: Registry,
    recording_proxy: RecordingProxy,
    signing_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", recording_proxy.url)
    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:1.0"))
    import_(result.path, signing_key, registry=f"{target_registry.host}/mirror")
    lines = [r.line for r in recording_proxy.requests]
    assert f"GET {source.url}/v2/team/hello/manifests/1.0" in lines
    assert any(line.startswith(f"GET {source.url}/v2/team/hello/blobs/") for line in lines)
    assert any(
        line.startswith(f"PUT {target_registry.url}/v2/mirror/team/hello/blobs/") for line in lines
    )
    assert f"PUT {target_registry.url}/v2/mirror/team/hello/manifests/1.0" in lines
    assert all(r.allowed for r in recording_proxy.requests)
    assert raw_digest(target_registry, "mirror/team/hello:1.0") == raw_digest(
        source, "team/hello:1.0"
    )


# --- a registry that lies -----------------------------------------------------------


def blob_file(reg: Registry, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return reg.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["layer", "platform-manifest"])
def test_a_registry_serving_corrupt_bytes_is_caught(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path, what: str
) -> None:
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    index = json.loads(skopeo_raw_manifest(registry, "team/hello:1.0"))
    child = index["manifests"][0]["digest"]
    if what == "layer":
        bad = json.loads(skopeo_raw_manifest(registry, f"team/hello@{child}"))["layers"][0]
        digest = bad["digest"]
    else:
        digest = child
    flip_byte(blob_file(registry, digest))
    # The registry itself serves the corrupt bytes without complaint...
    kind = "blobs" if what == "layer" else "manifests"
    served = registry.request(
        "GET",
        f"/v2/team/hello/{kind}/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert served.status == 200 and sha256(served.body) != digest
    # ...airbundle does not carry them.
    with pytest.raises(SourceError) as caught:
        export_spec(tmp_path, signing_key, *refs(registry, "team/hello:1.0"))
    assert digest in caught.value.message
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_a_corrupt_manifest_behind_a_tag_is_caught(
    registry: Registry, hello_layout: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    push_oci_layout(registry, hello_layout, "0.9", "team/hello:0.9")
    digest = raw_digest(registry, "team/hello:0.9")
    path = blob_file(registry, digest)
    # Still valid JSON, still the same image: only the bytes (and so the digest) differ.
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    served = registry.request(
        "GET",
        "/v2/team/hello/manifests/0.9",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert served.headers["docker-content-digest"] == digest != sha256(served.body)
    with pytest.raises(SourceError, match=digest):
        export_spec(tmp_path, signing_key, *refs(registry, "team/hello:0.9"))


def test_requests_carry_the_airbundle_user_agent(
    source: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle import __version__

    export_spec(tmp_path, signing_key, *refs(source, "team/hello:0.9"))
    wait_for_log(source, lambda log: any("/v2/team/hello/blobs/" in p for _, p, _ in log))
    agents = re.findall(
        r'"GET /v2/team/hello/\S+ HTTP/1\.1" \d+ \d+ "[^"]*" "([^"]*)"', source.log.read_text()
    )
    assert agents and set(agents) == {f"airbundle/{__version__}"}, set(agents)


# --- the command line ------------------------------------------------------------------


def test_cli_export_with_insecure_registry_and_import_under_a_prefix(
    source: Registry, target_registry: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec.yaml", *refs(source, *IMAGES))
    bundle = tmp_path / "cli.airbundle"
    exported = cli(
        "export",
        spec,
        "-o",
        bundle,
        "--key",
        signing_key.private,
        "--insecure-registry",
        source.host,
        "--no-cache",
    )
    assert exported.returncode == 0, exported.stderr
    report = tmp_path / "report.json"
    imported = cli(
        "import",
        bundle,
        "--trust",
        signing_key.public,
        "--registry",
        f"{target_registry.host}/team-mirror/v1",
        "--report",
        report,
    )
    assert imported.returncode == 0, imported.stderr
    for repo_tag in IMAGES:
        want = raw_digest(source, repo_tag)
        assert raw_digest(target_registry, f"team-mirror/v1/{repo_tag}") == want
        assert f"{target_registry.host}/team-mirror/v1/{repo_tag}  {want}" in imported.stdout
    assert len(json.loads(report.read_text())["images"]) == len(IMAGES)


def test_cli_import_into_a_closed_port_exits_3_with_a_clear_message(
    source: Registry, signing_key: KeyPair, tmp_path: Path
) -> None:
    result = export_spec(tmp_path, signing_key, *refs(source, "team/hello:0.9"))
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = cli("import", result.path, "--trust", signing_key.public, "--registry", f"{host}/mirror")
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 15
    assert host in proc.stderr and "refused" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
