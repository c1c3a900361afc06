"""Pick the adapter for each source named in a spec."""

from __future__ import annotations

from airbundle.adapters.docker_archive import DockerArchiveSource
from airbundle.adapters.images import ImageSource
from airbundle.adapters.oci_layout import OciLayoutSource
from airbundle.errors import SourceError
from airbundle.format.spec import SourceRef
from airbundle.limits import DEFAULT_LIMITS, Limits


def open_source(source: SourceRef, *, text: str, limits: Limits = DEFAULT_LIMITS) -> ImageSource:
    if source.transport == "oci":
        assert source.path is not None
        return OciLayoutSource(source.path, source.ref, text=text, limits=limits)
    if source.transport == "docker-archive":
        assert source.path is not None
        return DockerArchiveSource(source.path, source.ref, text=text, limits=limits)
    raise SourceError(
        f"{text}: pulling from registries is not available in this version; "
        "export the image to an OCI layout first (skopeo copy docker://... oci:DIR:REF) "
        "and name it as oci:DIR:REF"
    )
