"""Real servers on loopback for the tests: OCI registries, git servers, a proxy, netns.

Everything here starts real components (CNCF distribution's ``docker-registry``,
``git daemon``, ``git http-backend`` behind nginx + fcgiwrap) or small real servers
written with the standard library (a Docker token server, an HTTP proxy), bound to
127.0.0.1 on free ports, in temporary folders the caller passes in (pytest's
``tmp_path``). Nothing is mocked and nothing reaches beyond loopback.

Every server is a context manager; ``stop()`` is idempotent and kills the whole
process group. A missing tool fails the test (never skips) with its install hint,
through ``require_tool`` from ``conftest``.

The public API:

* :data:`TEST_CREDS`, :class:`ServerError`
* :func:`free_port`, :func:`port_open`, :func:`http_request`, :func:`clean_env`,
  :func:`git_env`, :func:`init_bare`, :class:`Process`, :func:`group_alive`
* :class:`CertAuthority` (test CA issuing server and client certificates)
* :class:`Registry` (plain, htpasswd, TLS, client-cert TLS, token auth) with its
  :class:`TokenServer`; :func:`push_oci_layout`, :func:`skopeo_inspect`,
  :func:`skopeo_raw_manifest`, :func:`skopeo`
* :class:`GitDaemon`, :class:`GitHttpServer`
* :class:`RecordingProxy`
* :func:`netns_run`, :func:`netns_argv`, :func:`assert_netns_isolated`
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import grp
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import pwd
import secrets
import select
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"
POLL = 0.05  # seconds between readiness probes
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
IP_HINT = "apt-get install iproute2"

Creds = tuple[str, str]
# The user the auth-requiring fixtures accept (registries, token server, git over HTTP).
TEST_CREDS: Creds = ("airbundle", "test-pass-1")


class ServerError(RuntimeError):
    """A server did not start (the message carries the tail of its log)."""


# --- small helpers ----------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy settings (loopback traffic must go direct), plus extra."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    if extra:
        env.update(extra)
    return env


def git_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for git clients: no user/system config, fixed identity, no prompts."""
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    for key in list(env):
        if key.startswith("GIT_"):
            del env[key]
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_AUTHOR_NAME": "Airbundle Tests",
            "GIT_AUTHOR_EMAIL": "tests@airbundle.invalid",
            "GIT_COMMITTER_NAME": "Airbundle Tests",
            "GIT_COMMITTER_EMAIL": "tests@airbundle.invalid",
        }
    )
    if extra:
        env.update(extra)
    return env


def require_tool(name: str) -> str:
    """conftest.require_tool (path of a tool; fails, never skips, with its install hint).

    Imported when called, not at import time: conftest.py imports this module, and
    scripts (the netns test) import this module without pytest having loaded conftest.
    """
    from conftest import require_tool as conftest_require_tool

    return conftest_require_tool(name)


def require_ip() -> str:
    """Path of iproute2's ``ip``; fail (never skip) with the install hint."""
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if Path(p).exists()), None
    )
    if path is None:
        pytest.fail(f"ip not found: {IP_HINT}", pytrace=False)
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(text.splitlines()[-lines:])


def short_socket_dir(preferred: Path) -> tuple[Path, bool]:
    """A folder for a unix socket: ``preferred`` if its paths fit in sun_path, else a
    fresh short folder under the system temp dir. Returns (folder, created_here)."""
    if len(str(preferred)) <= 80:
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="ab-sock-")), True


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    *,
    creds: Creds | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP(S) request with http.client: never uses proxy settings, no redirects."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    hdrs = dict(headers or {})
    if creds is not None:
        hdrs["Authorization"] = basic_auth(*creds)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only format distribution accepts;
    nginx checks them with libxcrypt). Cost 4 keeps startup fast."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode("ascii")
        lines.append(f"{user}:{hashed}\n")
    path.write_text("".join(lines))
    return path


# --- processes --------------------------------------------------------------


class Process:
    """A child in its own session (process group); stdout+stderr go to ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it."""
        pgid = self.popen.pid  # start_new_session: pgid == pid
        if self.popen.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                self.popen.wait(timeout)
        _killpg(pgid, signal.SIGKILL)  # stragglers left in the group (prefork children)
        deadline = time.monotonic() + timeout
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``probe`` every 50 ms; raise with the log tail if we exit or time out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.popen.poll()
            if code is not None:
                raise ServerError(f"{what} exited with status {code}:\n{log_tail(self.log)}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{what} not ready after {timeout:g}s:\n{log_tail(self.log)}")
            time.sleep(POLL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether a live process is left in process group ``pgid``. Zombies do not count:
    orphans are reparented to init, which may reap them late (a second or more in
    some sandboxes), and a zombie holds neither ports nor files."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_taken(log: Path) -> bool:
    text = log_tail(log, 200).lower()
    return any(
        s in text
        for s in ("address already in use", "unable to allocate any listen sockets", "eaddrinuse")
    )


class _Server:
    """Context manager with an ordered list of cleanups, run once in reverse order."""

    def __init__(self) -> None:
        self._cleanups: list[Callable[[], None]] = []
        self._stopped = False

    def _on_stop(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        errors: list[BaseException] = []
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as err:  # keep cleaning up; report the first failure
                errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_process(
        self,
        make_argv: Callable[[int], Sequence[str]],
        log: Path,
        probe: Callable[[int], bool],
        what: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        attempts: int = 3,
    ) -> tuple[Process, int]:
        """Start on a free port; retry on a new port if another process won the race."""
        for attempt in range(attempts):
            port = free_port()
            proc = Process(make_argv(port), log, env=env, cwd=cwd)
            try:
                proc.wait_ready(functools.partial(probe, port), timeout, what)
            except ServerError:
                proc.stop()
                if attempt + 1 < attempts and _port_taken(log):
                    continue
                raise
            self._on_stop(proc.stop)
            return proc, port
        raise AssertionError("unreachable")


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve_in_thread(httpd: http.server.HTTPServer, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": POLL}, name=name, daemon=True
    )
    thread.start()
    return thread


# --- certificates -----------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class CertAuthority:
    """A throw-away CA (EC P-256) in ``folder``: ``ca.crt`` plus issued pairs."""

    def __init__(self, folder: Path, name: str = "airbundle test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = folder / "ca.crt"
        self.cert_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        server: bool = True,
        client: bool = False,
        dns: Iterable[str] = ("localhost",),
        ips: Iterable[str] = (LOOPBACK,),
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> CertPair:
        """A leaf certificate for ``name`` (SAN DNS + IP) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = cert_file or self.folder / f"{name}.crt"
        key_path = key_file or self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return CertPair(cert_path, key_path)


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


# --- Docker token auth ------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``kid`` distribution 2.x looks up in its trusted keys (docker/libtrust):
    SHA-256 of the DER SubjectPublicKeyInfo, truncated to 240 bits, base32 without
    padding, in 12 colon-separated groups of 4."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


class TokenSigner:
    """An ES256 JWT signer whose self-signed certificate is the registry's
    ``rootcertbundle``. ``key_header`` selects how the token names its key:
    ``"kid"`` (libtrust fingerprint, looked up among the bundle's keys) or
    ``"x5c"`` (the certificate itself, verified against the bundle as roots)."""

    def __init__(self, folder: Path, *, key_header: str = "kid") -> None:
        if key_header not in ("kid", "x5c"):
            raise ValueError(f"key_header must be 'kid' or 'x5c', not {key_header!r}")
        folder.mkdir(parents=True, exist_ok=True)
        self.key_header = key_header
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airbundle token signer")])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(_key_usage(), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle = folder / "token-signer.crt"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self._key.public_key())

    def sign(self, claims: Mapping[str, Any]) -> str:
        header: dict[str, Any] = {"typ": "JWT", "alg": "ES256"}
        if self.key_header == "kid":
            header["kid"] = self.kid
        else:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode("ascii")]
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der_sig = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)  # JWS wants raw r || s, 32 bytes each
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    path: str
    service: str | None
    scopes: tuple[str, ...]  # as requested, one entry per scope
    user: str | None  # the user named in the credentials, if any were given
    auth_given: bool
    status: int
    granted: tuple[str, ...] = ()  # "type:name:actions" actually put in the token


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``repository:team/app:pull,push`` -> (type, name, actions)."""
    rest, _, actions = scope.rpartition(":")
    kind, _, name = rest.partition(":")
    return kind, name, [a for a in actions.split(",") if a]


class TokenServer(_Server):
    """The Docker registry token flow (GET realm?service=&scope=..., and the OAuth2
    POST form), issuing ES256 JWTs the registry's ``auth.token`` accepts.

    ``users`` with matching Basic credentials get every requested action; wrong
    credentials get 401; anonymous requests get ``pull`` on repositories only if
    ``anonymous_pull``, otherwise a token granting nothing. Every request is
    recorded in ``requests``.
    """

    def __init__(
        self,
        folder: Path,
        *,
        users: Mapping[str, str] | None = None,
        service: str = "airbundle-test-registry",
        issuer: str = "airbundle-test-issuer",
        anonymous_pull: bool = False,
        key_header: str = "kid",
        lifetime: int = 300,
    ) -> None:
        super().__init__()
        self.users = dict(users or {})
        self.service = service
        self.issuer = issuer
        self.anonymous_pull = anonymous_pull
        self.lifetime = lifetime
        self.signer = TokenSigner(folder, key_header=key_header)
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user, password, given = _basic_credentials(self.headers.get("Authorization"))
                owner._answer(self, "GET", query, user, password, given)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                user, password, given = _basic_credentials(self.headers.get("Authorization"))
                if not given and "username" in form:
                    user, password, given = form["username"][0], form.get("password", [""])[0], True
                owner._answer(self, "POST", form, user, password, given)

        self._httpd = _ThreadingServer((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        _serve_in_thread(self._httpd, f"token-server-{self.port}")
        self._on_stop(self._httpd.server_close)
        self._on_stop(self._httpd.shutdown)

    @property
    def realm(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/token"

    @property
    def bundle(self) -> Path:
        return self.signer.bundle

    def _answer(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        method: str,
        params: Mapping[str, list[str]],
        user: str | None,
        password: str | None,
        auth_given: bool,
    ) -> None:
        scopes = tuple(s for value in params.get("scope", []) for s in value.split() if s)
        services = params.get("service") or []
        service = services[0] if services else None
        path = urllib.parse.urlsplit(handler.path).path
        if auth_given and (user not in self.users or self.users[user] != password):
            self._record(TokenRequest(method, path, service, scopes, user, True, 401))
            _send_json(
                handler,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                {"WWW-Authenticate": 'Basic realm="airbundle-test-token"'},
            )
            return
        access = []
        granted = []
        for scope in scopes:
            kind, name, actions = parse_scope(scope)
            if auth_given:
                allowed = actions
            elif self.anonymous_pull and kind == "repository":
                allowed = [a for a in actions if a == "pull"]
            else:
                allowed = []
            access.append({"type": kind, "name": name, "actions": allowed})
            granted.append(f"{kind}:{name}:{','.join(allowed)}")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user if auth_given else "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.signer.sign(claims)
        self._record(
            TokenRequest(
                method,
                path,
                service,
                scopes,
                user if auth_given else None,
                auth_given,
                200,
                tuple(granted),
            )
        )
        issued = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _send_json(
            handler,
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": self.lifetime,
                "issued_at": issued,
            },
        )

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _basic_credentials(header: str | None) -> tuple[str | None, str | None, bool]:
    if not header or not header.lower().startswith("basic "):
        return None, None, False
    try:
        decoded = base64.b64decode(header.split(None, 1)[1]).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None, True
    user, _, password = decoded.partition(":")
    return user, password, True


def _send_json(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    obj: object,
    headers: Mapping[str, str] | None = None,
) -> None:
    body = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


# --- OCI registry -----------------------------------------------------------


class Registry(_Server):
    """CNCF distribution (``docker-registry serve``) on 127.0.0.1:PORT.

    Files live in a fresh folder under ``workdir``: ``config.yml``, ``storage/``,
    ``registry.log`` and, as options ask, certificates and the htpasswd file.

    * ``htpasswd={"user": "pass"}``: Basic auth (bcrypt htpasswd). With
      ``token_auth=True`` the same mapping is the token server's user list instead.
    * ``tls=True``: HTTPS with a server certificate for 127.0.0.1/localhost from a
      throw-away CA (``ca_file``); ``client_ca=True`` also requires client
      certificates signed by that CA (``client_cert``/``client_key``).
    * ``token_auth=True``: ``auth.token`` backed by a :class:`TokenServer`
      (``token_server``, ``token_requests``); ``anonymous_pull`` and
      ``token_key_header`` ("kid" or "x5c") pass through to it.

    ``cert_dir`` is a folder in the layout skopeo's ``--cert-dir`` expects
    (``ca.crt``, plus ``client.cert``/``client.key`` with client certificates).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: Mapping[str, str] | None = None,
        tls: bool = False,
        client_ca: bool = False,
        token_auth: bool = False,
        anonymous_pull: bool = False,
        token_key_header: str = "kid",  # noqa: S107 (not a password)
        timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self.binary = require_tool("docker-registry")
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="registry-", dir=workdir))
        self.storage = self.dir / "storage"
        self.storage.mkdir()
        self.config_file = self.dir / "config.yml"
        self.log = self.dir / "registry.log"
        self.users = dict(htpasswd or {})
        self.tls = tls or client_ca
        self.client_ca = client_ca
        self.token_server: TokenServer | None = None
        self.ca: CertAuthority | None = None
        self.ca_file: Path | None = None
        self.client_cert: Path | None = None
        self.client_key: Path | None = None
        self.cert_dir: Path | None = None
        self.port = 0
        try:
            self._setup(token_auth, anonymous_pull, token_key_header)
            self.process, self.port = self._start_process(
                lambda port: [self.binary, "serve", str(self._write_config(port))],
                self.log,
                self._ready,
                "docker-registry",
                timeout=timeout,
                env=_registry_env(self.dir),
                cwd=self.dir,
            )
        except BaseException:
            self.stop()
            raise

    def _setup(self, token_auth: bool, anonymous_pull: bool, key_header: str) -> None:
        self._auth: dict[str, Any] = {}
        if token_auth:
            self.token_server = TokenServer(
                self.dir / "token",
                users=self.users,
                anonymous_pull=anonymous_pull,
                key_header=key_header,
            )
            self._on_stop(self.token_server.stop)
            self._auth = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.bundle),
                }
            }
        elif self.users:
            path = write_htpasswd(self.dir / "htpasswd", self.users)
            self._auth = {"htpasswd": {"realm": "airbundle-test-registry", "path": str(path)}}
        self._tls: dict[str, Any] = {}
        if self.tls:
            self.ca = CertAuthority(self.dir / "pki")
            self.ca_file = self.ca.cert_file
            server = self.ca.issue("registry-server")
            self._tls = {"certificate": str(server.cert), "key": str(server.key)}
            self.cert_dir = self.dir / "certs.d"
            self.cert_dir.mkdir()
            shutil.copy(self.ca_file, self.cert_dir / "ca.crt")
            if self.client_ca:
                self._tls["clientcas"] = [str(self.ca_file)]
                pair = self.ca.issue(
                    "client",
                    server=False,
                    client=True,
                    dns=(),
                    ips=(),
                    cert_file=self.cert_dir / "client.cert",
                    key_file=self.cert_dir / "client.key",
                )
                self.client_cert, self.client_key = pair.cert, pair.key

    def _write_config(self, port: int) -> Path:
        http_cfg: dict[str, Any] = {
            "addr": f"{LOOPBACK}:{port}",
            "secret": secrets.token_hex(24),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self._tls:
            http_cfg["tls"] = self._tls
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_cfg,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self._auth:
            config["auth"] = self._auth
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_file

    def _ready(self, port: int) -> bool:
        scheme = "https" if self.tls else "http"
        try:
            resp = http_request(
                f"{scheme}://{LOOPBACK}:{port}/v2/", context=self.ssl_context(), timeout=1
            )
        except (OSError, http.client.HTTPException):
            return False
        return resp.status in (200, 401)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def token_requests(self) -> list[TokenRequest]:
        return self.token_server.requests if self.token_server else []

    def ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext | None:
        """A client context trusting our CA (and presenting the client cert), or None."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert and self.client_cert and self.client_key:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def request(
        self,
        method: str,
        path: str,
        *,
        creds: Creds | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        client_cert: bool = True,
    ) -> HttpResponse:
        """A direct HTTP(S) request to this registry (path starts with /)."""
        return http_request(
            self.url + path,
            method,
            creds=creds,
            headers=headers,
            body=body,
            context=self.ssl_context(client_cert=client_cert),
        )

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


def _registry_env(home: Path) -> dict[str, str]:
    # REGISTRY_* variables override the config file: never inherit them.
    env = {k: v for k, v in clean_env().items() if not k.startswith("REGISTRY_")}
    env["HOME"] = str(home)
    return env


# --- skopeo -----------------------------------------------------------------


def _skopeo_env(registry: Registry) -> dict[str, str]:
    """No user credentials or config leak in: HOME and the auth file point into the
    registry's folder (the auth file does not exist, so it is empty)."""
    env = clean_env()
    for key in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
        env.pop(key, None)
    env["HOME"] = str(registry.dir)
    env["REGISTRY_AUTH_FILE"] = str(registry.dir / "no-auth.json")
    return env


def _transport_opts(
    registry: Registry, prefix: str, creds: Creds | None, tls_verify: bool | None
) -> list[str]:
    """``--{prefix}cert-dir``/``--{prefix}tls-verify``/``--{prefix}creds`` for ``registry``.

    ``tls_verify=None`` verifies exactly when the registry speaks TLS (with its CA
    from ``cert_dir``); plain-HTTP registries always get ``tls-verify=false``.
    """
    verify = registry.tls if tls_verify is None else (tls_verify and registry.tls)
    opts = []
    if registry.cert_dir is not None:
        opts.append(f"--{prefix}cert-dir={registry.cert_dir}")
    opts.append(f"--{prefix}tls-verify={'true' if verify else 'false'}")
    if creds is not None:
        opts.append(f"--{prefix}creds={creds[0]}:{creds[1]}")
    else:
        opts.append(f"--{prefix}no-creds")
    return opts


def skopeo(
    args: Sequence[str],
    *,
    registry: Registry,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """``skopeo --insecure-policy ARGS`` with a hermetic environment for ``registry``;
    raises ServerError with stderr (and the registry log tail) if ``check`` fails."""
    argv = [require_tool("skopeo"), "--insecure-policy", *args]
    proc = subprocess.run(
        argv,
        env=_skopeo_env(registry),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ServerError(
            f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}\n"
            f"--- registry log ---\n{registry.log_tail(20)}"
        )
    return proc


def push_oci_layout(
    registry: Registry,
    layout_path: Path,
    ref_in_layout: str,
    repo_tag: str,
    *,
    all_platforms: bool = True,
    creds: Creds | None = None,
    tls_verify: bool | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Seed ``registry`` with ``oci:LAYOUT:REF`` as ``REGISTRY/repo_tag``, digests kept."""
    args = ["copy", "--preserve-digests", "--retry-times=0"]
    if all_platforms:
        args.append("--all")
    args += _transport_opts(registry, "dest-", creds, tls_verify)
    args += [f"oci:{layout_path}:{ref_in_layout}", f"docker://{registry.host}/{repo_tag}"]
    return skopeo(args, registry=registry, check=check)


def skopeo_inspect(
    registry: Registry,
    repo_ref: str,
    *,
    creds: Creds | None = None,
    tls_verify: bool | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """``skopeo inspect docker://REGISTRY/repo_ref`` as a dict (``raw``: the manifest)."""
    args = ["inspect", *_transport_opts(registry, "", creds, tls_verify)]
    if raw:
        args.append("--raw")
    args.append(f"docker://{registry.host}/{repo_ref}")
    result: dict[str, Any] = json.loads(skopeo(args, registry=registry).stdout)
    return result


def skopeo_raw_manifest(
    registry: Registry,
    repo_ref: str,
    *,
    creds: Creds | None = None,
    tls_verify: bool | None = None,
) -> bytes:
    """The manifest bytes exactly as served (hash them for the digest)."""
    args = ["inspect", "--raw", *_transport_opts(registry, "", creds, tls_verify)]
    args.append(f"docker://{registry.host}/{repo_ref}")
    argv = [require_tool("skopeo"), "--insecure-policy", *args]
    proc = subprocess.run(
        argv, env=_skopeo_env(registry), capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ServerError(f"{shlex.join(argv)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout


# --- git servers ------------------------------------------------------------


def init_bare(base_dir: Path, name: str) -> Path:
    """``git init --bare BASE/name`` (HEAD -> main); returns its path."""
    path = base_dir / name
    subprocess.run(
        [require_tool("git"), "init", "--quiet", "--bare", "-b", "main", str(path)],
        check=True,
        capture_output=True,
        env=clean_env({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}),
    )
    return path


def _sibling_workdir(base_dir: Path, kind: str) -> Path:
    base_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{base_dir.name}-{kind}-", dir=base_dir.parent))


class GitDaemon(_Server):
    """``git daemon`` serving every repository under ``base_dir`` (push enabled).

    Its log and HOME go to ``workdir`` (default: a fresh folder beside base_dir).
    """

    def __init__(
        self, base_dir: Path, *, workdir: Path | None = None, timeout: float = 10.0
    ) -> None:
        super().__init__()
        git = require_tool("git")
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or _sibling_workdir(self.base_dir, "git-daemon")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "git-daemon.log"
        self.process, self.port = self._start_process(
            lambda port: [
                git,
                "daemon",
                "--reuseaddr",
                f"--base-path={self.base_dir}",
                "--export-all",
                "--enable=receive-pack",
                f"--listen={LOOPBACK}",
                f"--port={port}",
                "--informative-errors",
                "--verbose",
                str(self.base_dir),
            ],
            self.log,
            port_open,
            "git daemon",
            timeout=timeout,
            env=git_env(self.workdir / "home"),
        )

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def url(self, name: str) -> str:
        return f"git://{self.host}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)


class GitSshServer(_Server):
    """OpenSSH's sshd on 127.0.0.1:PORT serving git over ssh for the current user,
    with a throw-away host key and client key (public-key login only).

    ``ssh_command`` is the GIT_SSH_COMMAND that reaches it: the client key, a
    known_hosts file holding only this host key, no agent, no user config.
    ``url(name)`` is ssh://USER@127.0.0.1:PORT/BASE/NAME.
    """

    def __init__(
        self, base_dir: Path, *, workdir: Path | None = None, timeout: float = 10.0
    ) -> None:
        super().__init__()
        sshd = require_tool("sshd")
        keygen = require_tool("ssh-keygen")
        self.ssh = require_tool("ssh")
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or _sibling_workdir(self.base_dir, "sshd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        for key in (host_key, self.client_key):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "airbundle-test", "-f", str(key)],
                check=True,
                capture_output=True,
            )
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        self.known_hosts = self.workdir / "known_hosts"
        if os.geteuid() == 0:
            # sshd started as root wants its privilege-separation folder.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = self.workdir / "sshd.log"
        config = self.workdir / "sshd_config"

        def argv(port: int) -> list[str]:
            config.write_text(
                f"Port {port}\nListenAddress {LOOPBACK}\nHostKey {host_key}\n"
                f"PidFile {self.workdir / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "PermitRootLogin prohibit-password\nAllowTcpForwarding no\n"
                "X11Forwarding no\nPrintMotd no\nLogLevel ERROR\n"
            )
            key_line = host_key.with_suffix(".pub").read_text().split()
            self.known_hosts.write_text(f"[{LOOPBACK}]:{port} {key_line[0]} {key_line[1]}\n")
            return [sshd, "-D", "-e", "-f", str(config)]

        self.process, self.port = self._start_process(
            argv, self.log, port_open, "sshd", timeout=timeout
        )

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ssh_command(self) -> str:
        return (
            f"{self.ssh} -F /dev/null -i {self.client_key} -o IdentitiesOnly=yes "
            f"-o IdentityAgent=none -o UserKnownHostsFile={self.known_hosts} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@{self.host}{self.base_dir}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)


def _nginx_user_directive() -> str:
    """nginx drops workers to ``nobody`` when started as root; keep them as the
    current user so they can reach the fcgiwrap socket and our temp folders."""
    if os.geteuid() != 0:
        return ""  # the directive is ignored (with a warning) unless run as root
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


class GitHttpServer(_Server):
    """nginx on 127.0.0.1:PORT -> fcgiwrap (unix socket) -> ``git http-backend``.

    Serves every repository under ``base_dir`` (GIT_HTTP_EXPORT_ALL), pushes
    enabled (``http.receivepack=true`` through GIT_CONFIG_COUNT, so the repos'
    own config is left alone). ``htpasswd={"user": "pass"}`` requires Basic auth
    for everything. nginx's files (conf, logs, temp) live in ``workdir``
    (default: a fresh folder beside base_dir).
    """

    BACKEND_CANDIDATES = (
        "/usr/lib/git-core/git-http-backend",
        "/usr/libexec/git-core/git-http-backend",
    )

    def __init__(
        self,
        base_dir: Path,
        *,
        htpasswd: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__()
        git = require_tool("git")
        self.nginx = require_tool("nginx")
        self.fcgiwrap = require_tool("fcgiwrap")
        self.backend = self._find_backend(git)
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or _sibling_workdir(self.base_dir, "git-http")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(htpasswd or {})
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.fcgi_log = self.workdir / "fcgiwrap.log"
        self.nginx_log = self.workdir / "nginx.log"
        self.htpasswd_file = (
            write_htpasswd(self.workdir / "htpasswd", self.users) if self.users else None
        )
        try:
            self._start_fcgiwrap(timeout)
            self.process, self.port = self._start_process(
                self._nginx_argv,
                self.nginx_log,
                self._ready,
                "nginx",
                timeout=timeout,
                env=clean_env(),
                cwd=self.workdir,
            )
        except BaseException:
            self.stop()
            raise

    def _find_backend(self, git: str) -> str:
        exec_path = subprocess.run(
            [git, "--exec-path"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for candidate in (f"{exec_path}/git-http-backend", *self.BACKEND_CANDIDATES):
            if Path(candidate).exists():
                return candidate
        pytest.fail("git-http-backend not found: apt-get install git", pytrace=False)

    def _start_fcgiwrap(self, timeout: float) -> None:
        sock_dir, created = short_socket_dir(self.workdir)
        if created:
            self._on_stop(lambda: shutil.rmtree(sock_dir, ignore_errors=True))
        self.socket = sock_dir / "fcgiwrap.sock"
        proc = Process(
            [self.fcgiwrap, "-f", "-c", "4", "-s", f"unix:{self.socket}"],
            self.fcgi_log,
            env=clean_env(),
            cwd=self.workdir,
        )
        self._on_stop(proc.stop)
        proc.wait_ready(self.socket.exists, timeout, "fcgiwrap")
        self.fcgi_process = proc

    def _write_conf(self, port: int) -> Path:
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        q = _nginx_quote
        auth = ""
        if self.htpasswd_file is not None:
            auth = (
                'auth_basic "airbundle-test-git";\n'
                f"            auth_basic_user_file {q(self.htpasswd_file)};"
            )
        params = {
            "SCRIPT_FILENAME": self.backend,
            "GIT_PROJECT_ROOT": str(self.base_dir),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
            "HOME": str(self.workdir),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        lines = [f"fastcgi_param {k} {q(v)};" for k, v in params.items()]
        lines += [
            f"fastcgi_param {k} {v};"
            for k, v in {
                "PATH_INFO": "$uri",
                "QUERY_STRING": "$query_string",
                "REQUEST_METHOD": "$request_method",
                "CONTENT_TYPE": "$content_type",
                "CONTENT_LENGTH": "$content_length",
                "REQUEST_URI": "$request_uri",
                "SERVER_PROTOCOL": "$server_protocol",
                "SERVER_NAME": "$server_name",
                "SERVER_PORT": "$server_port",
                "REMOTE_ADDR": "$remote_addr",
                "REMOTE_USER": "$remote_user",
                "HTTP_GIT_PROTOCOL": "$http_git_protocol",
                "HTTP_CONTENT_ENCODING": "$http_content_encoding",
            }.items()
        ]
        fastcgi = "\n            ".join(lines)
        conf = f"""\
{_nginx_user_directive()}
worker_processes 1;
events {{ worker_connections 128; }}
http {{
    access_log {q(self.access_log)};
    client_body_temp_path {q(tmp / "body")};
    fastcgi_temp_path {q(tmp / "fastcgi")};
    proxy_temp_path {q(tmp / "proxy")};
    uwsgi_temp_path {q(tmp / "uwsgi")};
    scgi_temp_path {q(tmp / "scgi")};
    client_max_body_size 0;
    server {{
        listen {LOOPBACK}:{port};
        server_name localhost;
        location / {{
            {auth}
            fastcgi_pass unix:{self.socket};
            fastcgi_read_timeout 300s;
            {fastcgi}
        }}
    }}
}}
"""
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        return path

    def _nginx_argv(self, port: int) -> list[str]:
        conf = self._write_conf(port)
        return [
            self.nginx,
            "-p",
            str(self.workdir),
            "-c",
            str(conf),
            "-e",
            str(self.error_log),
            "-g",
            f"daemon off; pid {self.workdir / 'nginx.pid'};",
        ]

    def _ready(self, port: int) -> bool:
        try:
            http_request(f"http://{LOOPBACK}:{port}/", timeout=1)
        except (OSError, http.client.HTTPException):
            return False
        return True

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def url(self, name: str, creds: Creds | None = None) -> str:
        auth = ""
        if creds is not None:
            user, password = (urllib.parse.quote(c, safe="") for c in creds)
            auth = f"{user}:{password}@"
        return f"http://{auth}{self.host}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)

    def log_tail(self, lines: int = 20) -> str:
        return (
            f"--- nginx error.log ---\n{log_tail(self.error_log, lines)}\n"
            f"--- fcgiwrap ---\n{log_tail(self.fcgi_log, lines)}"
        )


def _nginx_quote(value: object) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- recording proxy --------------------------------------------------------


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str  # the absolute URI, or host:port for CONNECT
    allowed: bool

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass
class _ProxyState:
    allowed_hosts: frozenset[str]
    requests: list[ProxyRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sockets: set[socket.socket] = field(default_factory=set)
    closing: threading.Event = field(default_factory=threading.Event)

    def record(self, method: str, target: str, allowed: bool) -> None:
        with self.lock:
            self.requests.append(ProxyRequest(method, target, allowed))


class RecordingProxy(_Server):
    """An HTTP proxy on 127.0.0.1 that records every request and only forwards to
    loopback: CONNECT tunnels and absolute-URI GET/HEAD/POST/PUT/PATCH/DELETE/OPTIONS.
    Other targets get 403 (recorded with ``allowed=False``), and no connection."""

    def __init__(self, *, allowed_hosts: Iterable[str] = (LOOPBACK, "localhost", "::1")) -> None:
        super().__init__()
        self._state = _ProxyState(frozenset(h.lower() for h in allowed_hosts))
        self._httpd = _ThreadingServer((LOOPBACK, 0), _make_proxy_handler(self._state))
        self.port = int(self._httpd.server_address[1])
        _serve_in_thread(self._httpd, f"recording-proxy-{self.port}")
        self._on_stop(self._httpd.server_close)
        self._on_stop(self._close_tunnels)
        self._on_stop(self._httpd.shutdown)

    @property
    def requests(self) -> list[ProxyRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _close_tunnels(self) -> None:
        self._state.closing.set()
        with self._state.lock:
            socks = list(self._state.sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def _make_proxy_handler(state: _ProxyState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _allowed(self, host: str | None) -> bool:
            return host is not None and host.strip("[]").lower() in state.allowed_hosts

        def _refuse(self, status: int, why: str) -> None:
            self.close_connection = True
            body = why.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_CONNECT(self) -> None:
            host, _, port = self.path.rpartition(":")
            allowed = self._allowed(host) and port.isdigit()
            state.record("CONNECT", self.path, allowed)
            if not allowed:
                self._refuse(403, f"proxy: only loopback targets, not {self.path}\n")
                return
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            except OSError as err:
                self._refuse(502, f"proxy: {err}\n")
                return
            self.close_connection = True
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            _tunnel(state, self.connection, upstream)

        def _forward(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.scheme != "http" or not parts.hostname:
                state.record(self.command, self.path, False)
                self._refuse(400, "proxy: absolute http:// URI required\n")
                return
            allowed = self._allowed(parts.hostname)
            state.record(self.command, self.path, allowed)
            if not allowed:
                self._refuse(403, f"proxy: only loopback targets, not {parts.hostname}\n")
                return
            self.close_connection = True
            try:
                upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
            except OSError as err:
                self._refuse(502, f"proxy: {err}\n")
                return
            with upstream:
                path = parts.path or "/"
                if parts.query:
                    path += "?" + parts.query
                head = [f"{self.command} {path} HTTP/1.1"]
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        head.append(f"{key}: {value}")
                head.append("Connection: close")
                upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    _copy_chunked(self.rfile, upstream)
                else:
                    _copy_exact(self.rfile, upstream, int(self.headers.get("Content-Length") or 0))
                # Upstream closes after its response (Connection: close): relay it raw.
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    self.wfile.write(data)
                self.wfile.flush()

        do_GET = do_HEAD = do_POST = do_PUT = _forward  # noqa: N815
        do_PATCH = do_DELETE = do_OPTIONS = _forward  # noqa: N815

    return Handler


def _copy_exact(rfile: Any, sock: socket.socket, length: int) -> None:
    while length > 0:
        data = rfile.read(min(length, 65536))
        if not data:
            raise ConnectionError("client closed before sending the whole body")
        sock.sendall(data)
        length -= len(data)


def _copy_chunked(rfile: Any, sock: socket.socket) -> None:
    """Relay a chunked body verbatim (sizes, data, trailers)."""
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed inside a chunked body")
        sock.sendall(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                trailer = rfile.readline(65537)
                sock.sendall(trailer)
                if trailer in (b"\r\n", b"\n", b""):
                    return
        _copy_exact(rfile, sock, size + 2)


def _tunnel(state: _ProxyState, client: socket.socket, upstream: socket.socket) -> None:
    with state.lock:
        state.sockets.update((client, upstream))
    try:
        pair = {client: upstream, upstream: client}
        while not state.closing.is_set():
            readable, _, _ = select.select(list(pair), [], [], 0.5)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                pair[sock].sendall(data)
    except (OSError, ValueError):
        return
    finally:
        with state.lock:
            state.sockets.discard(client)
            state.sockets.discard(upstream)
        upstream.close()


# --- network namespaces -----------------------------------------------------


def netns_argv(argv: Sequence[str]) -> list[str]:
    """argv wrapped to run in a fresh user+network namespace with only lo, up."""
    unshare = require_tool("unshare")
    ip = require_ip()
    script = f'{shlex.quote(ip)} link set lo up && exec "$@"'
    return [unshare, "--user", "--map-root-user", "--net", "--", "sh", "-c", script, "sh", *argv]


def netns_run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside a fresh user+network namespace (only loopback, up);
    text output captured. Raises ServerError if the namespace cannot be made."""
    proc = subprocess.run(
        netns_argv(argv),
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 and proc.stderr.startswith(("unshare:", "RTNETLINK")):
        raise ServerError(
            f"cannot create a network namespace (user namespaces disabled?):\n{proc.stderr}"
        )
    return proc


_PROBE = """\
import errno, json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
try:
    socket.create_connection((host, port), timeout=5).close()
except OSError as err:
    print(json.dumps({"connected": False, "errno": err.errno, "error": str(err),
                      "seconds": time.monotonic() - start}))
else:
    print(json.dumps({"connected": True, "seconds": time.monotonic() - start}))
"""


def assert_netns_isolated(host: str = "192.0.2.1", port: int = 80) -> str:
    """Prove a namespace from :func:`netns_run` has no route out: a TCP connect to
    ``host`` (TEST-NET-1 by default) fails at once with ENETUNREACH, before any packet
    could leave. Returns the error message; raises AssertionError otherwise."""
    proc = netns_run([sys.executable, "-c", _PROBE, host, str(port)], timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["connected"], f"connected to {host}:{port} from inside the namespace"
    assert result["errno"] == errno.ENETUNREACH, result
    assert result["seconds"] < 1.0, result
    return str(result["error"])
