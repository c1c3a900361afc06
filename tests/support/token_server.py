"""The Docker registry token flow: an ES256 JWT signer in the form distribution
trusts, and a token server that records every request it answers."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from support.net import LOOPBACK
from support.pki import key_usage
from support.process import Server, ThreadingServer, serve_in_thread

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
            .add_extension(key_usage(), critical=True)
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


class TokenServer(Server):
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

        self._httpd = ThreadingServer((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        serve_in_thread(self._httpd, f"token-server-{self.port}")
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
