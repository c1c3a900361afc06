"""skopeo, the independent judge of registries: seed a registry from an OCI
layout, read manifests back exactly as served. Always with a hermetic environment
(no user credentials or config)."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.env import clean_env, require_tool
from support.net import Creds
from support.process import ServerError
from support.registry import Registry

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


def skopeo_digest(ref: str, *args: str) -> str:
    """sha256 of the raw manifest skopeo gets for `ref`."""
    proc = subprocess.run(
        ["skopeo", *args, "inspect", "--raw", "--tls-verify=false", ref]
        if "--registries-conf" not in args
        else ["skopeo", *args, "inspect", "--raw", ref],
        capture_output=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
