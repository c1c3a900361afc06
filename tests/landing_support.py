"""Test support for issue 17 (landing in the cluster): a private CA made by
openssl, a docker-registry serving HTTPS with it, and a loopback proxy in front
of docker-registry that refuses what stricter registries refuse."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import Registry, clean_env, require_tool


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM) clients must trust
    server_cert: Path
    server_key: Path


def openssl_pki(folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    """A throw-away CA and a server certificate for `hosts`, made by the
    openssl command line as an operator would make them."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    sans = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    subject = ["-subj", "/CN=airbundle test mirror CA"]
    sign = ["-set_serial", "2", "-days", "2", "-out", cert, "-extfile", ext]
    steps = [
        [
            openssl,
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            *subject,
            *ca_ext,
        ],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={hosts[0]}"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, *sign],
    ]
    for argv in steps:
        subprocess.run(
            [str(a) for a in argv], check=True, capture_output=True, env=clean_env(), timeout=60
        )
    return Pki(ca, cert, key)


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
