"""`airbundle probe`: what a registry accepts, asked with throw-away pushes."""

from __future__ import annotations

from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.probe import ProbeResult, probe
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import TargetError, UsageError
from airbundle.format.mapping import RegistryLocation
from airbundle.limits import DEFAULT_LIMITS, Limits


def probe_registry(
    target: str, *, transport: Transport, limits: Limits = DEFAULT_LIMITS
) -> ProbeResult:
    """Probe `--registry HOST[:PORT][/PREFIX]` (an OCI layout takes everything:
    there is nothing to ask)."""
    if target.startswith("oci:"):
        raise UsageError(
            f"--registry {target}: an OCI layout takes every document; probe a registry"
        )
    location = RegistryLocation.parse(target)
    client = RegistryClient(location.host, transport, error=TargetError, limits=limits)
    return probe(client, location.prefix, max_depth=limits.probe_max_depth)
