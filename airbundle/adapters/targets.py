"""The targets an import writes to (and an inventory lists), parsed once from
what the operator named: `--registry oci:DIR` or `HOST[:PORT][/PREFIX]`, and
`--git DIR` or a URL template with `{name}`. Everything else talks to the
ImageTarget and GitTarget protocols.
"""

from __future__ import annotations

from pathlib import Path

from airbundle.adapters.git_targets import BareRepoTarget, GitTarget, RemoteTarget
from airbundle.adapters.images import ImageTarget
from airbundle.adapters.oci_layout import OciLayoutTarget
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.target import RegistryImageTarget
from airbundle.adapters.registry.transport import TLSConfig, Transport
from airbundle.errors import TargetError, UsageError
from airbundle.format.mapping import MappingOptions, RegistryLocation
from airbundle.limits import DEFAULT_LIMITS, Limits

LAYOUT_PREFIX = "oci:"


def open_image_target(
    text: str,
    *,
    transport: Transport,
    mapping: MappingOptions | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ImageTarget:
    """--registry oci:DIR (an OCI layout) or HOST[:PORT][/PREFIX] (a registry)."""
    if text.startswith(LAYOUT_PREFIX):
        return OciLayoutTarget(Path(text.removeprefix(LAYOUT_PREFIX)).resolve(), limits=limits)
    location = RegistryLocation.parse(text)
    client = RegistryClient(location.host, transport, error=TargetError, limits=limits)
    return RegistryImageTarget(client, location, mapping, limits=limits)


def open_git_target(
    text: str, *, tls: TLSConfig | None = None, limits: Limits = DEFAULT_LIMITS
) -> GitTarget:
    """--git DIR (bare repositories) or --git URL-TEMPLATE (with {name}); an
    HTTPS server is trusted with the same TLS options as the registry."""
    if "{name}" in text:
        return RemoteTarget(text, tls=tls, limits=limits)
    if "://" in text:
        raise UsageError(
            f"--git {text!r}: a URL needs a {{name}} placeholder, e.g. git://host/{{name}}.git"
        )
    return BareRepoTarget(Path(text))
