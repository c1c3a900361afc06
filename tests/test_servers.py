"""The server fixtures work: judged by skopeo, git and plain Python HTTP clients.

Every server here is real (docker-registry, git daemon, nginx + fcgiwrap +
git http-backend, a token server and a proxy written on the standard library) and
listens on 127.0.0.1 only; the network-namespace tests prove nothing else is reachable.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support.bundles import sha256
from support.env import git_env
from support.git_daemon import GitDaemon
from support.git_http import GitHttpServer
from support.net import TEST_CREDS, free_port, http_request, port_open
from support.netns import assert_netns_isolated, netns_run
from support.oci import OCI_INDEX
from support.process import Process, ServerError, group_alive
from support.proxy import RecordingProxy
from support.registry import Registry
from support.skopeo import push_oci_layout, skopeo, skopeo_inspect, skopeo_raw_manifest
from support.token_server import TokenSigner, libtrust_key_id

TESTS_DIR = Path(__file__).resolve().parent
CREDS = TEST_CREDS
WRONG = (TEST_CREDS[0], "wrong")


def tag_digest(hello_layout: Path, tag: str) -> str:
    index = json.loads((hello_layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(desc["digest"])
    raise KeyError(tag)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def bcrypt_hashed(htpasswd: Path) -> bool:
    return all(line.split(":", 1)[1].startswith("$2") for line in htpasswd.read_text().split())


def git(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout if check else proc.stdout + proc.stderr


def make_work_repo(root: Path, env: dict[str, str]) -> tuple[Path, str]:
    work = root / "work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work, env=env)
    (work / "README").write_text("hello over the wire\n")
    git("add", "README", cwd=work, env=env)
    git("commit", "-q", "-m", "first", cwd=work, env=env)
    git("tag", "-a", "v1", "-m", "v1", cwd=work, env=env)
    return work, git("rev-parse", "HEAD", cwd=work, env=env).strip()


def ls_remote(url: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    out = git("ls-remote", url, cwd=cwd, env=env)
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


# --- basics -----------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_libtrust_key_id_format() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    kid = libtrust_key_id(ec.generate_private_key(ec.SECP256R1()).public_key())
    groups = kid.split(":")
    assert len(groups) == 12
    assert all(len(g) == 4 and g.isalnum() and g.upper() == g for g in groups)


@pytest.mark.parametrize(
    ("start", "hint"),
    [
        (lambda tmp: Registry(tmp), "docker-registry not found: apt-get install docker-registry"),
        (lambda tmp: GitDaemon(tmp / "repos"), "git not found: apt-get install git"),
        (lambda tmp: GitHttpServer(tmp / "repos"), "git not found: apt-get install git"),
        (lambda tmp: netns_run(["true"]), "unshare not found: apt-get install util-linux"),
    ],
    ids=["registry", "git-daemon", "git-http", "netns"],
)
@pytest.mark.integration
def test_a_missing_tool_fails_with_its_install_hint(
    start: Any, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(pytest.fail.Exception, match=hint):
        start(tmp_path)


def test_startup_failures_carry_the_log_tail(tmp_path: Path) -> None:
    crash = Process(["sh", "-c", "echo boom >&2; exit 3"], tmp_path / "crash.log")
    with pytest.raises(ServerError, match=r"(?s)exited with status 3.*boom"):
        crash.wait_ready(lambda: False, 5, "crasher")
    slow = Process(["sh", "-c", "echo still starting; exec sleep 30"], tmp_path / "slow.log")
    try:
        with pytest.raises(ServerError, match=r"(?s)not ready after 0.2s.*still starting"):
            slow.wait_ready(lambda: False, 0.2, "sleeper")
    finally:
        slow.stop()
    assert slow.poll() is not None and not group_alive(slow.pid)


@pytest.mark.integration
def test_stop_kills_every_process_and_frees_the_port(tmp_path: Path) -> None:
    with Registry(tmp_path) as reg, GitHttpServer(tmp_path / "repos") as web:
        groups = [reg.process.pid, web.process.pid, web.fcgi_process.pid]
        ports = [reg.port, web.port]
        assert all(group_alive(g) for g in groups) and all(port_open(p) for p in ports)
    assert not any(group_alive(g) for g in groups)
    assert not any(port_open(p) for p in ports)
    reg.stop()  # idempotent


# --- registries -------------------------------------------------------------


def test_plain_registry_round_trips_an_oci_layout(registry: Registry, hello_layout: Path) -> None:
    assert http_request(registry.url + "/v2/").status == 200
    push_oci_layout(registry, hello_layout, "1.0", "team/hello:1.0")
    push_oci_layout(registry, hello_layout, "0.9", "team/hello:0.9")

    want_10, want_09 = tag_digest(hello_layout, "1.0"), tag_digest(hello_layout, "0.9")
    raw = skopeo_raw_manifest(registry, "team/hello:1.0")
    assert sha256(raw) == want_10
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    assert skopeo_inspect(registry, "team/hello:1.0")["Digest"] == want_10
    assert skopeo_inspect(registry, "team/hello:0.9")["Digest"] == want_09
    by_digest = skopeo_inspect(registry, f"team/hello@{want_10}", raw=True)
    assert len(by_digest["manifests"]) == 2  # --all pushed both platforms

    tags = registry.request("GET", "/v2/team/hello/tags/list").json()
    assert sorted(tags["tags"]) == ["0.9", "1.0"]
    assert (registry.storage / "docker/registry/v2/repositories/team/hello").is_dir()
    # delete is enabled
    resp = registry.request("DELETE", f"/v2/team/hello/manifests/{want_09}")
    assert resp.status == 202, resp


def test_htpasswd_registry_refuses_anonymous_and_accepts_creds(
    auth_registry: Registry, hello_layout: Path
) -> None:
    reg = auth_registry
    assert reg.request("GET", "/v2/").status == 401
    assert reg.request("GET", "/v2/", creds=WRONG).status == 401
    assert reg.request("GET", "/v2/", creds=CREDS).status == 200
    assert bcrypt_hashed(reg.dir / "htpasswd")

    anon = push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", check=False)
    assert anon.returncode != 0
    assert "unauthorized" in anon.stderr.lower() or "401" in anon.stderr
    wrong = push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", creds=WRONG, check=False)
    assert wrong.returncode != 0

    push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", creds=CREDS)
    info = skopeo_inspect(reg, "team/hello:1.0", creds=CREDS)
    assert info["Digest"] == tag_digest(hello_layout, "1.0")
    with pytest.raises(ServerError, match=r"(?i)unauthorized|authentication required"):
        skopeo_inspect(reg, "team/hello:1.0")


def test_tls_registry_needs_the_ca(tls_registry: Registry, hello_layout: Path) -> None:
    reg = tls_registry
    assert reg.url.startswith("https://127.0.0.1:")
    assert reg.ca_file is not None and reg.cert_dir is not None
    assert (reg.cert_dir / "ca.crt").read_bytes() == reg.ca_file.read_bytes()
    assert reg.request("GET", "/v2/").status == 200  # Python trusts the CA file
    with pytest.raises(ssl.SSLCertVerificationError):
        http_request(reg.url + "/v2/", context=ssl.create_default_context())

    # skopeo with --dest-cert-dir (ca.crt) and verification on
    push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", tls_verify=True)
    assert skopeo_inspect(reg, "team/hello:1.0")["Digest"] == tag_digest(hello_layout, "1.0")

    # ...and without the CA it must fail
    bare = skopeo(
        ["inspect", "--tls-verify=true", f"docker://{reg.host}/team/hello:1.0"],
        registry=reg,
        check=False,
    )
    assert bare.returncode != 0
    assert "certificate" in bare.stderr.lower() or "x509" in bare.stderr


@pytest.mark.integration
def test_tls_registry_with_client_certificates(tmp_path: Path, hello_layout: Path) -> None:
    with Registry(tmp_path, tls=True, client_ca=True) as reg:
        assert reg.client_cert is not None and reg.cert_dir is not None
        assert (reg.cert_dir / "client.cert").exists() and (reg.cert_dir / "client.key").exists()
        assert reg.request("GET", "/v2/").status == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            reg.request("GET", "/v2/", client_cert=False)

        push_oci_layout(reg, hello_layout, "0.9", "team/hello:0.9")
        assert skopeo_inspect(reg, "team/hello:0.9")["Digest"] == tag_digest(hello_layout, "0.9")

        # the CA alone (no client.cert) is not enough
        ca_only = tmp_path / "ca-only"
        ca_only.mkdir()
        (ca_only / "ca.crt").write_bytes(reg.cert_dir.joinpath("ca.crt").read_bytes())
        refused = skopeo(
            ["inspect", f"--cert-dir={ca_only}", f"docker://{reg.host}/team/hello:0.9"],
            registry=reg,
            check=False,
        )
        assert refused.returncode != 0, refused.stdout


@pytest.mark.parametrize("key_header", ["kid", "x5c"])
@pytest.mark.integration
def test_token_registry_runs_the_docker_token_flow(
    tmp_path: Path, hello_layout: Path, key_header: str
) -> None:
    anonymous_pull = key_header == "x5c"
    with Registry(
        tmp_path,
        token_auth=True,
        htpasswd=dict([CREDS]),
        anonymous_pull=anonymous_pull,
        token_key_header=key_header,
    ) as reg:
        assert reg.token_server is not None
        challenge = reg.request("GET", "/v2/")
        assert challenge.status == 401
        assert challenge.headers["www-authenticate"].startswith(
            f'Bearer realm="{reg.token_server.realm}"'
        )

        push_oci_layout(reg, hello_layout, "1.0", "team/hello:1.0", creds=CREDS)
        scoped = [r for r in reg.token_requests if r.scopes]
        assert any(
            r.auth_given
            and r.user == CREDS[0]
            and r.status == 200
            and any(s.startswith("repository:team/hello:") and "push" in s for s in r.scopes)
            for r in scoped
        ), reg.token_requests
        assert all(r.service == reg.token_server.service for r in reg.token_requests)

        info = skopeo_inspect(reg, "team/hello:1.0", creds=CREDS)
        assert info["Digest"] == tag_digest(hello_layout, "1.0")

        before = len(reg.token_requests)
        wrong = push_oci_layout(
            reg, hello_layout, "0.9", "team/hello:0.9", creds=WRONG, check=False
        )
        assert wrong.returncode != 0
        assert any(r.status == 401 for r in reg.token_requests[before:])

        # the registry checks the signature: a token from another key is refused
        scope = "repository:team/hello:pull"
        svc = reg.token_server.service
        issued = http_request(f"{reg.token_server.realm}?service={svc}&scope={scope}", creds=CREDS)
        token = issued.json()["token"]
        assert issued.json()["access_token"] == token and issued.json()["expires_in"] == 300
        header = json.loads(_b64decode(token.split(".")[0]))
        assert (key_header in header) and header["alg"] == "ES256"
        bearer = {"Authorization": f"Bearer {token}"}
        assert reg.request("GET", "/v2/team/hello/tags/list", headers=bearer).status == 200
        forger = TokenSigner(tmp_path / "forger", key_header=key_header)
        forged = forger.sign(json.loads(_b64decode(token.split(".")[1])))
        resp = reg.request(
            "GET", "/v2/team/hello/tags/list", headers={"Authorization": f"Bearer {forged}"}
        )
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]

        anon_push = push_oci_layout(reg, hello_layout, "0.9", "team/hello:0.9", check=False)
        assert anon_push.returncode != 0
        if anonymous_pull:
            assert skopeo_inspect(reg, "team/hello:1.0")["Digest"] == tag_digest(
                hello_layout, "1.0"
            )
            assert any(
                not r.auth_given and "repository:team/hello:pull" in r.granted
                for r in reg.token_requests
            )
        else:
            with pytest.raises(ServerError):
                skopeo_inspect(reg, "team/hello:1.0")


def test_token_registry_fixture(token_registry: Registry, hello_layout: Path) -> None:
    push_oci_layout(token_registry, hello_layout, "0.9", "team/hello:0.9", creds=TEST_CREDS)
    want = tag_digest(hello_layout, "0.9")
    assert skopeo_inspect(token_registry, "team/hello:0.9", creds=TEST_CREDS)["Digest"] == want
    with pytest.raises(ServerError):
        skopeo_inspect(token_registry, "team/hello:0.9")
    assert {r.auth_given for r in token_registry.token_requests} == {True, False}


# --- git servers ------------------------------------------------------------


def test_git_daemon_push_and_ls_remote(git_daemon: GitDaemon, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    work, head = make_work_repo(tmp_path, env)
    git_daemon.init_bare("proj.git")
    url = git_daemon.url("proj.git")
    assert url.startswith("git://127.0.0.1:")

    git("push", "-q", url, "main", "v1", cwd=work, env=env)
    refs = ls_remote(url, tmp_path, env)
    assert refs["refs/heads/main"] == head
    assert "refs/tags/v1" in refs

    git("clone", "-q", url, str(tmp_path / "clone"), cwd=tmp_path, env=env)
    assert (tmp_path / "clone" / "README").read_text() == "hello over the wire\n"


def test_git_http_push_and_clone(git_http: GitHttpServer, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    work, head = make_work_repo(tmp_path, env)
    git_http.init_bare("proj.git")
    url = git_http.url("proj.git")
    assert url.startswith("http://127.0.0.1:")

    git("push", "-q", url, "main", "v1", cwd=work, env=env)
    assert ls_remote(url, tmp_path, env)["refs/heads/main"] == head
    git("clone", "-q", url, str(tmp_path / "clone"), cwd=tmp_path, env=env)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "clone", env=env).strip() == head
    # smart HTTP, not the dumb protocol
    assert "git-receive-pack" in git_http.access_log.read_text()


def test_git_http_with_basic_auth(git_http_auth: GitHttpServer, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    work, head = make_work_repo(tmp_path, env)
    server = git_http_auth
    server.init_bare("proj.git")
    anon = git("ls-remote", server.url("proj.git"), cwd=tmp_path, env=env, check=False)
    assert "could not read Username" in anon or "401" in anon or "Authentication" in anon
    wrong = git("push", server.url("proj.git", WRONG), "main", cwd=work, env=env, check=False)
    assert "Authentication failed" in wrong or "401" in wrong

    url = server.url("proj.git", CREDS)
    git("push", "-q", url, "main", cwd=work, env=env)
    git("clone", "-q", url, str(tmp_path / "clone"), cwd=tmp_path, env=env)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "clone", env=env).strip() == head
    assert f"{CREDS[0]} " in server.access_log.read_text()  # remote user logged


# --- proxy ------------------------------------------------------------------


def request(url: str, method: str, data: bytes | None = None) -> urllib.request.Request:
    headers = {"Content-Type": "application/octet-stream"} if data else {}
    return urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310


def _opener(proxy: RecordingProxy, context: ssl.SSLContext | None = None) -> Any:
    handlers: list[Any] = [urllib.request.ProxyHandler({"http": proxy.url, "https": proxy.url})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def test_proxy_forwards_plain_http_to_the_registry(
    recording_proxy: RecordingProxy, registry: Registry
) -> None:
    opener = _opener(recording_proxy)
    with opener.open(registry.url + "/v2/_catalog", timeout=10) as resp:
        assert json.load(resp) == {"repositories": []}
    # a monolithic blob upload: POST, then PUT with a body, then HEAD
    blob = b"through the proxy\n" * 100
    start = request(registry.url + "/v2/proxied/blobs/uploads/", "POST", b"")
    with opener.open(start, timeout=10) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    sep = "&" if "?" in location else "?"
    put = request(f"{location}{sep}digest={sha256(blob)}", "PUT", blob)
    with opener.open(put, timeout=10) as resp:
        assert resp.status == 201
    head = request(f"{registry.url}/v2/proxied/blobs/{sha256(blob)}", "HEAD")
    with opener.open(head, timeout=10) as resp:
        assert int(resp.headers["Content-Length"]) == len(blob)

    lines = [r.line for r in recording_proxy.requests]
    assert f"GET {registry.url}/v2/_catalog" in lines
    assert f"POST {registry.url}/v2/proxied/blobs/uploads/" in lines
    assert any(line.startswith(f"PUT {registry.url}/v2/proxied/blobs/uploads/") for line in lines)
    assert f"HEAD {registry.url}/v2/proxied/blobs/{sha256(blob)}" in lines
    assert all(r.allowed for r in recording_proxy.requests)


def test_proxy_tunnels_connect_to_a_tls_registry(
    recording_proxy: RecordingProxy, tls_registry: Registry
) -> None:
    opener = _opener(recording_proxy, tls_registry.ssl_context())
    with opener.open(tls_registry.url + "/v2/", timeout=10) as resp:
        assert resp.status == 200
    assert [r.line for r in recording_proxy.requests] == [f"CONNECT {tls_registry.host}"]


def test_proxy_refuses_non_loopback_targets(recording_proxy: RecordingProxy) -> None:
    opener = _opener(recording_proxy)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open("http://192.0.2.1/v2/", timeout=10)
    assert refused.value.code == 403
    with pytest.raises(urllib.error.URLError, match="403"):
        opener.open("https://example.com/", timeout=10)
    assert [(r.line, r.allowed) for r in recording_proxy.requests] == [
        ("GET http://192.0.2.1/v2/", False),
        ("CONNECT example.com:443", False),
    ]


def test_git_http_through_the_proxy(
    git_http: GitHttpServer, recording_proxy: RecordingProxy, tmp_path: Path
) -> None:
    env = git_env(tmp_path / "home")
    work, head = make_work_repo(tmp_path, env)
    git_http.init_bare("proj.git")
    url = git_http.url("proj.git")
    git("-c", f"http.proxy={recording_proxy.url}", "push", "-q", url, "main", cwd=work, env=env)
    assert ls_remote(url, tmp_path, env)["refs/heads/main"] == head
    lines = [r.line for r in recording_proxy.requests]
    assert f"GET {url}/info/refs?service=git-receive-pack" in lines
    assert f"POST {url}/git-receive-pack" in lines


# --- network namespaces -----------------------------------------------------

LOOPBACK_SCRIPT = """\
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
cli = socket.create_connection(srv.getsockname(), timeout=5)
conn, _ = srv.accept()
cli.sendall(b"ping")
print(conn.recv(4).decode())
"""


@pytest.mark.integration
def test_netns_has_loopback_only() -> None:
    proc = netns_run([sys.executable, "-c", LOOPBACK_SCRIPT])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ping"
    links = netns_run(["ip", "-o", "link"])
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
    message = assert_netns_isolated()
    assert "unreachable" in message.lower()


@pytest.mark.integration
def test_registry_inside_the_netns(tmp_path: Path, hello_layout: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from support.net import http_request
        from support.registry import Registry
        from support.skopeo import push_oci_layout, skopeo_inspect
        with Registry(Path({str(tmp_path)!r})) as reg:
            push_oci_layout(reg, Path({str(hello_layout)!r}), "1.0", "ns/hello:1.0")
            digest = skopeo_inspect(reg, "ns/hello:1.0")["Digest"]
            catalog = http_request(reg.url + "/v2/_catalog").json()
        print(json.dumps({{"digest": digest, "catalog": catalog}}))
        """
    )
    proc = netns_run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["digest"] == tag_digest(hello_layout, "1.0")
    assert result["catalog"] == {"repositories": ["ns/hello"]}
