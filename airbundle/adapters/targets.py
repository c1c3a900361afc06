"""The targets an import writes to (and an inventory lists), parsed once from
what the operator named: `--registry oci:DIR` or `HOST[:PORT][/PREFIX]`, and
`--git DIR` or a URL template with `{name}`. Everything else talks to the
ImageTarget and GitTarget protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from airbundle.errors import TargetError, UsageError
from airbundle.format.mapping import MappingOptions, RegistryLocation
from airbundle.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from airbundle.adapters.git_targets import GitTarget
    from airbundle.adapters.images import ImageTarget
    from airbundle.adapters.registry.transport import TLSConfig, Transport

# The adapters themselves (urllib3, git) are imported when a target is opened:
# `serve` and `inventory` of a layout only need layout_path.

LAYOUT_PREFIX = "oci:"


def layout_path(text: str) -> Path | None:
    """The folder of `--registry oci:DIR`, or None for a registry. A folder whose
    path holds ':' is refused: skopeo, podman and containerd name an image in a
    layout as oci:PATH:REF and split at that colon, so nothing could address it."""
    if not text.startswith(LAYOUT_PREFIX):
        return None
    folder = text.removeprefix(LAYOUT_PREFIX)
    if not folder:
        raise UsageError(f"--registry {text!r}: name the layout's folder, as oci:DIR")
    path = Path(folder).resolve()
    if ":" in str(path):
        raise UsageError(
            f"--registry {text!r}: the layout folder {str(path)!r} contains ':', which "
            "other tools cannot address (they read oci:PATH:REF and split at the colon)",
            hint="choose a folder whose path has no ':'",
        )
    return path


def open_image_target(
    text: str,
    *,
    transport: Transport,
    mapping: MappingOptions | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ImageTarget:
    """--registry oci:DIR (an OCI layout) or HOST[:PORT][/PREFIX] (a registry)."""
    from airbundle.adapters.oci_layout import OciLayoutTarget
    from airbundle.adapters.registry.client import RegistryClient
    from airbundle.adapters.registry.target import RegistryImageTarget

    layout = layout_path(text)
    if layout is not None:
        return OciLayoutTarget(layout, limits=limits)
    location = RegistryLocation.parse(text)
    client = RegistryClient(location.host, transport, error=TargetError, limits=limits)
    return RegistryImageTarget(client, location, mapping, limits=limits)


def open_git_target(
    text: str, *, tls: TLSConfig | None = None, limits: Limits = DEFAULT_LIMITS
) -> GitTarget:
    """--git DIR (bare repositories) or --git URL-TEMPLATE (with {name}); an
    HTTPS server is trusted with the same TLS options as the registry."""
    from airbundle.adapters.git_targets import BareRepoTarget, RemoteTarget

    if "{name}" in text:
        return RemoteTarget(text, tls=tls, limits=limits)
    if "://" in text:
        raise UsageError(
            f"--git {text!r}: a URL needs a {{name}} placeholder, e.g. git://host/{{name}}.git"
        )
    return BareRepoTarget(Path(text))
