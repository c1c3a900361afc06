"""A throw-away CA and server certificate made by the ``openssl`` command line, as an
operator would make them (not by the ``cryptography`` calls of support.pki)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.env import clean_env, require_tool


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
