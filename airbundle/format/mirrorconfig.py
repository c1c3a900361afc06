"""Mirror configuration generated from what was actually carried and where it landed.

Clusters keep pulling by upstream names (docker.io/library/nginx:1.25); these
files redirect such pulls to the private registry: OpenShift's
ImageDigestMirrorSet / ImageTagMirrorSet / ImageContentSourcePolicy, the
containers registries.conf (CRI-O, podman, skopeo), containerd's
certs.d/HOST/hosts.toml, and a kustomize `images:` list for those who rewrite
instead of redirect. Pure: entries in, file texts out, deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from airbundle.errors import FormatError, UsageError
from airbundle.format.reference import ImageReference, api_host

SCOPES = ("repository", "registry")


@dataclass(frozen=True, order=True)
class MirrorEntry:
    source: str  # upstream repository (or registry, with scope=registry)
    mirror: str  # where it is mirrored: host[:port]/path
    tags: bool  # some image was carried by tag (so tag pulls may use the mirror)


@dataclass(frozen=True)
class CarriedImage:
    ref: ImageReference  # as carried (upstream name)
    mirror_host: str
    mirror_repository: str


def entries(images: Iterable[CarriedImage], *, scope: str = "repository") -> list[MirrorEntry]:
    """One entry per upstream repository (or per upstream registry when every
    repository of it maps the same way), digest-only unless some tag was carried."""
    if scope not in SCOPES:
        raise UsageError(f"mirror scope {scope!r}: use one of {', '.join(SCOPES)}")
    by_repo: dict[str, MirrorEntry] = {}
    for image in images:
        source = image.ref.name
        mirror = f"{image.mirror_host}/{image.mirror_repository}"
        known = by_repo.get(source)
        if known is not None and known.mirror != mirror:
            raise UsageError(f"{source} was mirrored to both {known.mirror} and {mirror}")
        tags = image.ref.tag is not None or (known.tags if known else False)
        by_repo[source] = MirrorEntry(source, mirror, tags)
    result = sorted(by_repo.values())
    if scope == "registry":
        result = _collapse(result)
    return result


def _collapse(items: list[MirrorEntry]) -> list[MirrorEntry]:
    """Merge the repositories of one upstream registry into a single prefix
    entry when they all map by the same path prefix; keep them apart otherwise."""
    out: list[MirrorEntry] = []
    by_host: dict[str, list[MirrorEntry]] = {}
    for item in items:
        by_host.setdefault(item.source.split("/", 1)[0], []).append(item)
    for host, group in sorted(by_host.items()):
        prefixes = {_mirror_prefix(e) for e in group}
        if len(prefixes) == 1 and None not in prefixes:
            (prefix,) = prefixes
            assert prefix is not None
            out.append(MirrorEntry(host, prefix, any(e.tags for e in group)))
        else:
            out.extend(group)
    return out


def _mirror_prefix(entry: MirrorEntry) -> str | None:
    """host/prefix such that mirror == host/prefix/<source path>, if so."""
    path = entry.source.split("/", 1)[1]
    if entry.mirror.endswith("/" + path):
        return entry.mirror[: -len(path) - 1]
    return None


def _yaml(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)


def _name(bundle: str) -> str:
    """A Kubernetes object name (DNS subdomain) derived from the bundle name."""
    base = "".join(c if c.isalnum() or c in "-." else "-" for c in bundle.lower()).strip("-.")
    return f"airbundle-{base or 'mirror'}"[:240]


def openshift(items: list[MirrorEntry], *, bundle: str) -> dict[str, str]:
    name = _name(bundle)
    digest = [{"source": e.source, "mirrors": [e.mirror]} for e in items]
    tagged = [{"source": e.source, "mirrors": [e.mirror]} for e in items if e.tags]
    files = {
        "openshift/imagedigestmirrorset.yaml": _yaml(
            {
                "apiVersion": "config.openshift.io/v1",
                "kind": "ImageDigestMirrorSet",
                "metadata": {"name": name},
                "spec": {"imageDigestMirrors": digest},
            }
        ),
        "openshift/imagecontentsourcepolicy.yaml": _yaml(
            {
                "apiVersion": "operator.openshift.io/v1alpha1",
                "kind": "ImageContentSourcePolicy",
                "metadata": {"name": name},
                "spec": {"repositoryDigestMirrors": digest},
            }
        ),
    }
    if tagged:
        files["openshift/imagetagmirrorset.yaml"] = _yaml(
            {
                "apiVersion": "config.openshift.io/v1",
                "kind": "ImageTagMirrorSet",
                "metadata": {"name": name},
                "spec": {"imageTagMirrors": tagged},
            }
        )
    return files


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def registries_conf(items: list[MirrorEntry], *, insecure: bool) -> str:
    """containers-registries.conf(5), version 2: one [[registry]] per source."""
    lines = [
        "# Generated by airbundle: redirects pulls of carried images to the mirror.",
        "# Merge into /etc/containers/registries.conf or drop into registries.conf.d/.",
        "",
    ]
    for e in items:
        lines += [
            "[[registry]]",
            f"prefix = {_toml_string(e.source)}",
            f"location = {_toml_string(e.source)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_string(e.mirror)}",
            f"insecure = {'true' if insecure else 'false'}",
            # Tags can move upstream; only digests are safe from a mirror
            # that was filled by digest.
            f"pull-from-mirror = {_toml_string('all' if e.tags else 'digest-only')}",
            "",
        ]
    return "\n".join(lines)


def containerd(items: list[MirrorEntry], *, insecure: bool) -> dict[str, str]:
    """certs.d/<upstream-host>/hosts.toml per upstream registry.

    containerd mirrors a whole registry; a repository-level mapping works
    because our mappings are uniform per registry (prefix + upstream path)."""
    by_host: dict[str, list[MirrorEntry]] = {}
    for e in items:
        by_host.setdefault(e.source.split("/", 1)[0], []).append(e)
    files: dict[str, str] = {}
    for host, group in sorted(by_host.items()):
        # Repository entries give their prefix; a registry-wide entry is one.
        prefixes = {_mirror_prefix(e) if "/" in e.source else e.mirror for e in group}
        if len(prefixes) != 1 or None in prefixes:
            raise UsageError(
                f"containerd mirrors whole registries, but the repositories of {host} are "
                "mapped to different prefixes; use --keep-source-host or one prefix"
            )
        (prefix,) = prefixes
        assert prefix is not None
        mirror_host, _, path = prefix.partition("/")
        scheme = "http" if insecure else "https"
        url = f"{scheme}://{mirror_host}/v2" + (f"/{path}" if path else "")
        capabilities = '["pull", "resolve"]' if any(e.tags for e in group) else '["pull"]'
        lines = [
            "# Generated by airbundle: pulls from this registry go to the mirror first.",
            f"server = {_toml_string('https://' + api_host(host))}",
            "",
            f"[host.{_toml_string(url)}]",
            f"  capabilities = {capabilities}",
            # The URL already holds /v2 and the mirror's prefix.
            "  override_path = true",
        ]
        if insecure:
            lines.append("  skip_verify = true")
        files[f"containerd/certs.d/{host}/hosts.toml"] = "\n".join(lines) + "\n"
    return files


def kustomize(items: list[MirrorEntry]) -> str:
    """A kustomize `images:` list rewriting each carried name (and its short form)."""
    images = []
    for e in items:
        if "/" not in e.source:
            continue  # a registry-wide entry has no image name to rewrite
        names = [e.source]
        try:
            familiar = ImageReference.parse(e.source + ":x").familiar.rsplit(":", 1)[0]
        except FormatError:  # a name we cannot shorten keeps its long form
            familiar = e.source
        if familiar != e.source:
            names.append(familiar)
        images += [{"name": n, "newName": e.mirror} for n in names]
    return _yaml({"images": images})


def render_all(items: list[MirrorEntry], *, bundle: str, insecure: bool) -> dict[str, str]:
    files = openshift(items, bundle=bundle)
    files["registries.conf"] = registries_conf(items, insecure=insecure)
    try:
        files.update(containerd(items, insecure=insecure))
    except UsageError as exc:
        # Flattened or mixed mappings: say so instead of writing wrong files.
        files["containerd/NOT-GENERATED.txt"] = (
            f"containerd hosts.toml files were not generated: {exc.message}\n"
            "Use registries.conf (CRI-O, podman) or the kustomize image list instead.\n"
        )
    files["kustomize/images.yaml"] = kustomize(items)
    return files
