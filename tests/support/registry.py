"""CNCF distribution (``docker-registry serve``) on loopback: plain, Basic auth,
TLS, client-certificate TLS and token auth."""

from __future__ import annotations

import http.client
import http.server
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support.env import clean_env, require_tool
from support.net import LOOPBACK, Creds, HttpResponse, http_request, write_htpasswd
from support.openssl_pki import Pki
from support.pki import CertAuthority
from support.process import Server, log_tail
from support.token_server import TokenRequest, TokenServer

# --- OCI registry -----------------------------------------------------------


class Registry(Server):
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


class OpensslRegistry(Registry):
    """docker-registry over HTTPS with a certificate from `openssl_pki`
    (ca_file and cert_dir point at that CA)."""

    def __init__(self, workdir: Path, pki: Pki, **kwargs: Any) -> None:
        self._pki = pki
        super().__init__(workdir, tls=True, **kwargs)

    def _setup(self, token_auth: bool, anonymous_pull: bool, key_header: str) -> None:
        super()._setup(token_auth, anonymous_pull, key_header)
        self._tls = {"certificate": str(self._pki.server_cert), "key": str(self._pki.server_key)}
        self.ca_file = self._pki.ca
        assert self.cert_dir is not None
        shutil.copy(self._pki.ca, self.cert_dir / "ca.crt")


class ConfiguredRegistry(Registry):
    """docker-registry with more of its configuration set (`extra`, merged into
    config.yml): read-only maintenance mode, deletes off, and so on."""

    def __init__(self, workdir: Path, extra: dict[str, Any], **kwargs: Any) -> None:
        self._extra = extra
        super().__init__(workdir, **kwargs)

    def _write_config(self, port: int) -> Path:
        path = super()._write_config(port)
        config = yaml.safe_load(path.read_text())
        _merge(config, self._extra)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
