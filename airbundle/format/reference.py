"""Docker/OCI image references, normalized the way the docker CLI does it.

A reference written in a spec must mean the same image it means to
``docker pull``, so parsing follows distribution/reference's
``ParseNormalizedNamed`` (``nginx`` is ``docker.io/library/nginx``), plus the
default tag ``latest`` when neither tag nor digest is given.

Grammar (from distribution/reference)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]
    host             := domain-name | "[" ipv6 "]"
    domain-name      := domain-component ( "." domain-component )*
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path             := path-component ( "/" path-component )*
    path-component   := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

The 255-character limit applies to the path after normalization (so
``library/`` counts, the registry does not), as in current distribution.

Where we differ, it is to refuse or to stay unambiguous, never to accept more:

* digests are narrower: see :mod:`airbundle.format.digest`;
* a first component taken as a host but not a valid one (``a_b.c/d``) is an
  error; distribution silently falls back to a name without any registry;
* :attr:`ImageReference.familiar` keeps ``docker.io/`` where the short form
  would read back as another registry (``docker.io/localhost/x``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from airbundle.errors import InvalidDigestError, InvalidReferenceError
from airbundle.format.digest import Digest

DEFAULT_REGISTRY: Final = "docker.io"
DEFAULT_TAG: Final = "latest"
# Docker Hub's v1-era name; docker rewrites it to docker.io, and only it:
# registry-1.docker.io is left alone, as distribution does.
_LEGACY_DEFAULT_REGISTRY: Final = "index.docker.io"
_OFFICIAL_PREFIX: Final = "library/"
_LOCALHOST: Final = "localhost"

MAX_REPOSITORY_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 128

# All character classes are spelled out in ASCII: Python's \w and \d match
# Unicode letters and digits, which Go's (and registries') do not.
_PATH_COMPONENT: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG: Final = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_TAG_LENGTH - 1}}}")
_PORT: Final = re.compile(r"[0-9]+")
# A bare image ID; docker refuses it as a name so that "docker pull <id>"
# cannot silently mean a Hub repository.
_IDENTIFIER: Final = re.compile(r"[a-f0-9]{64}")

_QUOTE_LIMIT: Final = 80
_HINT: Final = (
    "expected [registry/]repository[:tag][@sha256:<hex>], for example "
    "'nginx:1.25' or 'registry.example.com:5000/team/app@sha256:...'"
)


def _quote(value: str) -> str:
    # repr() escapes control characters, so hostile input cannot forge log lines.
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + "..."
    return repr(value)


def _tag_problem(tag: str) -> str | None:
    if _TAG.fullmatch(tag):
        return None
    if not tag:
        return "tag is empty"
    if len(tag) > MAX_TAG_LENGTH:
        return f"tag is {len(tag)} characters long, the limit is {MAX_TAG_LENGTH}"
    return (
        f"tag {_quote(tag)} must start with a letter, digit or '_' and contain "
        "only letters, digits, '_', '.' and '-'"
    )


def _repository_problem(path: str) -> str | None:
    if not path:
        return "repository name is empty"
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if not component:
            return f"repository {_quote(path)} has an empty path component (stray '/')"
        if _PATH_COMPONENT.fullmatch(component.lower()):
            return f"repository name must be lowercase: {_quote(path)}"
        return (
            f"repository path component {_quote(component)} is invalid: use lowercase "
            "letters and digits, separated by '.', '_', '__' or dashes"
        )
    if len(path) > MAX_REPOSITORY_LENGTH:
        return (
            f"repository name must not be more than {MAX_REPOSITORY_LENGTH} characters "
            f"(it is {len(path)})"
        )
    return None


def _registry_problem(registry: str) -> str | None:
    if _HOST.fullmatch(registry):
        return None
    return f"registry {_quote(registry)} is not a valid host[:port]"


def _looks_like_registry(component: str) -> bool:
    """distribution's splitDockerDomain test for "this first component is a host"."""
    return (
        component == _LOCALHOST
        or "." in component
        or ":" in component
        # Path components are lowercase, so distribution takes an uppercase
        # first component to be a host name ("Foo/bar" is host "Foo").
        or component.lower() != component
    )


def check_registry_host(host: str) -> str:
    """Return ``host`` if it names a registry as HOST[:PORT] that a reference
    would read back as a host (a '.', a ':port' or 'localhost')."""
    problem = _registry_problem(host)
    if problem is None and not _looks_like_registry(host):
        problem = (
            f"registry {_quote(host)} would be read as a Docker Hub namespace; "
            "a registry needs a '.', a ':port' or to be 'localhost'"
        )
    if problem:
        raise InvalidReferenceError(problem)
    return host


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise InvalidReferenceError."""
    problem = _tag_problem(tag)
    if problem is not None:
        raise InvalidReferenceError(f"invalid tag {_quote(tag)}: {problem}")
    return tag


def validate_repository(path: str) -> str:
    """Return ``path`` if it is a valid repository path (no registry, no tag)."""
    problem = _repository_problem(path)
    if problem is not None:
        raise InvalidReferenceError(f"invalid repository {_quote(path)}: {problem}")
    return path


def api_host(registry: str) -> str:
    """Where a registry's API is served: Docker Hub's is not at docker.io itself."""
    return "registry-1.docker.io" if registry == DEFAULT_REGISTRY else registry


def is_loopback_registry(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("["):
        inner, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _PORT.fullmatch(port[1:]))):
            return False
        try:
            return ipaddress.IPv6Address(inner).is_loopback
        except ValueError:
            return False
    name = host
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        if not _PORT.fullmatch(port):
            return False
    if name.lower() == _LOCALHOST:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ImageReference:
    """A fully normalized reference: always a registry, and a tag or a digest.

    Construction validates, and rejects values that would not survive a round
    trip through ``str()`` and :meth:`parse` (for example registry
    ``index.docker.io``, or ``docker.io`` with a one-component repository), so
    every instance is in canonical form.
    """

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise InvalidReferenceError(f"invalid image reference {_quote(str(self))}: {problem}")

    def _problem(self) -> str | None:
        problem = _registry_problem(self.registry) or _repository_problem(self.repository)
        if problem is not None:
            return problem
        if not _looks_like_registry(self.registry):
            return (
                f"registry {_quote(self.registry)} would be read back as a Docker Hub "
                "namespace; a registry needs a '.', a ':port' or to be 'localhost'"
            )
        if self.registry == _LEGACY_DEFAULT_REGISTRY:
            return f"registry must be written {DEFAULT_REGISTRY!r}, not {self.registry!r}"
        if self.registry == DEFAULT_REGISTRY and "/" not in self.repository:
            return (
                f"Docker Hub repositories have a namespace: "
                f"{_OFFICIAL_PREFIX}{self.repository}, not {self.repository}"
            )
        if self.tag is not None:
            problem = _tag_problem(self.tag)
            if problem is not None:
                return problem
        elif self.digest is None:
            return "a reference needs a tag or a digest"
        return None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse and normalize like ``docker pull`` does."""
        if not text:
            raise _invalid(text, "it is empty")
        if _IDENTIFIER.fullmatch(text):
            raise _invalid(
                text, "a bare 64-character hex string is an image ID, not a repository name"
            )

        # No other part may contain "@", so the first one starts the digest.
        # Splitting it off before looking for "/" accepts exactly what
        # distribution accepts, but blames the digest in "x@sha256:../../y".
        name_part, at, digest_text = text.partition("@")
        first, slash, rest = name_part.partition("/")
        if slash and _looks_like_registry(first):
            registry, remainder = first, rest
        else:
            registry, remainder = DEFAULT_REGISTRY, name_part
        if registry == _LEGACY_DEFAULT_REGISTRY:
            registry = DEFAULT_REGISTRY
        path, colon, tag_text = remainder.partition(":")

        problem = _registry_problem(registry) or _repository_problem(path)
        if problem is not None:
            raise _invalid(text, problem)
        tag: str | None = None
        if colon:
            problem = _tag_problem(tag_text)
            if problem is not None:
                raise _invalid(text, problem)
            tag = tag_text
        digest: Digest | None = None
        if at:
            try:
                digest = Digest.parse(digest_text)
            except InvalidDigestError as exc:
                raise _invalid(text, exc.message) from None

        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = _OFFICIAL_PREFIX + path
            # Only here can the prefix push a valid path over the limit.
            problem = _repository_problem(path)
            if problem is not None:
                raise _invalid(text, problem)
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short form docker prints: ``nginx:latest``, ``user/app:1``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository
            official = self.repository.removeprefix(_OFFICIAL_PREFIX)
            # "library/a/b" keeps its prefix: "a/b" would mean namespace "a".
            if official != self.repository and "/" not in official:
                name = official
            # Unlike distribution's FamiliarString, keep docker.io where the
            # short form would read back as another registry
            # ("docker.io/localhost/x", "docker.io/a.b/c").
            first, slash, _ = name.partition("/")
            if slash and _looks_like_registry(first):
                name = self.name
        return name + self._suffix()

    def with_tag(self, tag: str) -> ImageReference:
        """The same reference with ``tag``; a digest, if any, is kept."""
        return dataclasses.replace(self, tag=validate_tag(tag))

    def with_digest(self, digest: Digest) -> ImageReference:
        """The same reference pinned to ``digest``; a tag, if any, is kept."""
        return dataclasses.replace(self, digest=digest)

    def without_registry(self) -> str:
        """Repository path with tag and digest: ``library/nginx:1.25``."""
        return self.repository + self._suffix()

    def _suffix(self) -> str:
        suffix = ""
        if self.tag is not None:
            suffix += f":{self.tag}"
        if self.digest is not None:
            suffix += f"@{self.digest}"
        return suffix

    def __str__(self) -> str:
        return self.name + self._suffix()


def _invalid(text: str, problem: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"invalid image reference {_quote(text)}: {problem}", hint=_HINT)


def spellings(name: str) -> tuple[str, ...]:
    """Every way of writing the repository `name` (``registry/path``, as
    :attr:`ImageReference.name` gives it) that :meth:`ImageReference.parse`
    reads back as `name`, longest first.

    Tools that match names literally (kustomize's ``images:``) need each one:
    ``docker.io/library/nginx`` is also written ``nginx``, ``library/nginx``,
    ``docker.io/nginx``, ``index.docker.io/nginx`` and
    ``index.docker.io/library/nginx``. Other registries have one spelling.
    """
    registry, _, path = name.partition("/")
    if registry != DEFAULT_REGISTRY:
        return (name,)
    paths = [path]
    if path.startswith(_OFFICIAL_PREFIX):
        paths.append(path.removeprefix(_OFFICIAL_PREFIX))
    hosts = (f"{_LEGACY_DEFAULT_REGISTRY}/", f"{DEFAULT_REGISTRY}/", "")
    found: list[str] = []
    for host in hosts:
        for candidate in paths:
            text = host + candidate
            try:
                if ImageReference.parse(f"{text}:{DEFAULT_TAG}").name == name:
                    found.append(text)
            except InvalidReferenceError:
                continue
    return tuple(dict.fromkeys(found))
