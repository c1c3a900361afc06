"""Pick the adapter for each source named in a spec."""

from __future__ import annotations

from dataclasses import dataclass, field

from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.docker_archive import DockerArchiveSource
from airbundle.adapters.httpfetch import HttpFetcher
from airbundle.adapters.images import ImageSource, ReferringSource
from airbundle.adapters.oci_layout import OciLayoutSource
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.source import RegistryImageSource
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import SourceError
from airbundle.format.reference import api_host
from airbundle.format.spec import SourceRef
from airbundle.limits import DEFAULT_LIMITS, Limits


@dataclass
class Sources:
    """Opens sources; one registry client (and token cache) per registry host."""

    transport: Transport = field(default_factory=Transport)
    limits: Limits = DEFAULT_LIMITS
    cache: BlobCache | None = None
    _clients: dict[str, RegistryClient] = field(default_factory=dict)
    _fetcher: HttpFetcher | None = None

    def fetcher(self) -> HttpFetcher:
        """Plain HTTP(S) downloads (chart repositories, files by URL) with the
        registries' transport: the same proxies, CA, client certificate."""
        if self._fetcher is None:
            self._fetcher = HttpFetcher(self.transport, self.limits)
        return self._fetcher

    def client(self, registry: str) -> RegistryClient:
        host = api_host(registry)
        if host not in self._clients:
            self._clients[host] = RegistryClient(
                host, self.transport, error=SourceError, limits=self.limits
            )
        return self._clients[host]

    def open(self, source: SourceRef, *, text: str) -> ImageSource:
        if source.transport == "oci":
            assert source.path is not None
            return OciLayoutSource(source.path, source.ref, text=text, limits=self.limits)
        if source.transport == "docker-archive":
            assert source.path is not None
            return DockerArchiveSource(source.path, source.ref, text=text, limits=self.limits)
        return self.open_referring(source, text=text)

    def open_referring(self, source: SourceRef, *, text: str) -> ReferringSource:
        """A registry image, which can also list what refers to it."""
        if source.reference is None:
            raise SourceError(f"{text}: referrers are found in registries only")
        return RegistryImageSource(
            source.reference,
            self.client(source.reference.registry),
            text=text,
            cache=self.cache,
        )
