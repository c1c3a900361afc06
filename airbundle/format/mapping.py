"""Where each carried image lands in a target registry.

Default: the source repository path without its registry host, under the
target's prefix (docker.io/library/nginx -> TARGET/PREFIX/library/nginx).
Collisions are found before anything is pushed.
"""

from __future__ import annotations

from dataclasses import dataclass

from airbundle.errors import FormatError, UsageError
from airbundle.format.reference import ImageReference, check_registry_host, validate_repository


@dataclass(frozen=True)
class RegistryLocation:
    host: str  # host[:port]
    prefix: str  # repository path prefix, may be empty

    @classmethod
    def parse(cls, text: str) -> RegistryLocation:
        """`HOST[:PORT][/PREFIX]`, as given to --registry."""
        scheme, sep, _ = text.partition("://")
        if sep and scheme in ("http", "https"):
            raise UsageError(
                f"--registry {text!r}: give the registry without a scheme, "
                "as HOST[:PORT][/PREFIX]",
                hint="airbundle speaks TLS to a registry; plain HTTP only to loopback or "
                "to a host named with --insecure-registry HOST[:PORT]",
            )
        body = text.removeprefix("docker://").rstrip("/")
        host, _, prefix = body.partition("/")
        if not host or "@" in body or " " in body:
            raise UsageError(f"--registry {text!r}: expected HOST[:PORT][/PREFIX]")
        try:
            check_registry_host(host)
            if prefix:
                validate_repository(prefix)
        except FormatError as exc:
            raise UsageError(f"--registry {text!r}: {exc.message}") from None
        return cls(host, prefix)


@dataclass(frozen=True)
class MappingOptions:
    keep_source_host: bool = False
    # Registries that limit nesting (some allow only project/name): the last
    # components are joined with '-' so the path has at most this many.
    max_nested_paths: int | None = None


def target_repository(
    ref: ImageReference, location: RegistryLocation, options: MappingOptions = MappingOptions()
) -> str:
    path = ref.repository
    if options.keep_source_host:
        # A port's colon is not allowed in a repository path component.
        path = f"{ref.registry.replace(':', '-')}/{path}"
    if location.prefix:
        path = f"{location.prefix}/{path}"
    limit = options.max_nested_paths
    if limit is not None:
        if limit < 1:
            raise UsageError("--max-nested-paths must be at least 1")
        parts = path.split("/")
        if len(parts) > limit:
            path = "/".join([*parts[: limit - 1], "-".join(parts[limit - 1 :])])
    try:
        return validate_repository(path)
    except FormatError as exc:
        raise UsageError(
            f"image {ref} cannot be mapped into {location.host}: {exc.message}"
        ) from None


def map_images(
    refs: list[ImageReference],
    location: RegistryLocation,
    options: MappingOptions = MappingOptions(),
) -> dict[ImageReference, str]:
    """Target repository for each image; refuse two source repositories on one target."""
    mapping: dict[ImageReference, str] = {}
    owners: dict[str, str] = {}
    for ref in refs:
        repo = target_repository(ref, location, options)
        owner = owners.setdefault(repo, ref.name)
        if owner != ref.name:
            raise UsageError(
                f"{owner} and {ref.name} would both land in {location.host}/{repo}",
                hint="use --keep-source-host to keep the source registry in the target path",
            )
        mapping[ref] = repo
    return mapping
