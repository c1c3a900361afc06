"""Mirror configuration generated from what was actually carried and where it landed.

Clusters keep pulling by upstream names (docker.io/library/nginx:1.25); these
files redirect such pulls to the private registry: OpenShift's
ImageDigestMirrorSet / ImageTagMirrorSet / ImageContentSourcePolicy, the
containers registries.conf (CRI-O, podman, skopeo), containerd's
certs.d/HOST/hosts.toml, and a kustomize `images:` list for those who rewrite
instead of redirect. How clients reach the mirror (plain HTTP, HTTPS they
cannot verify, HTTPS signed by a private CA) is a `MirrorTrust`: each file says
it in its own terms, and the cluster side of it (OpenShift's image config,
certs.d folders) is written too. Pure: entries in, file texts out,
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from airbundle.errors import FormatError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.reference import ImageReference, api_host, spellings

SCOPES = ("repository", "registry")
# A Kubernetes object name (DNS-1123 subdomain): labels of [a-z0-9-] that start
# and end alphanumeric, joined by dots, at most 253 characters in all.
_NAME_LIMIT = 253
_LABEL_LIMIT = 63
# OpenShift reads one CA per registry from the additionalTrustedCA ConfigMap,
# under the registry's host with '..' in place of the port's ':'.
OPENSHIFT_CONFIG_NAMESPACE = "openshift-config"
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class MirrorTrust:
    """How clients reach the mirror, as the import found it.

    `scheme` "http": plain HTTP. "https" with `verify` False: TLS whose
    certificate clients must not check (the import used --insecure-registry).
    "https" with `ca_pem`: TLS signed by a CA clients must be given (the
    import's --ca-file). "https" alone: a certificate the system trusts."""

    scheme: str = "https"
    verify: bool = True
    ca_pem: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise UsageError(f"mirror scheme {self.scheme!r}: use http or https")
        if self.ca_pem is not None and _PEM_CERTIFICATE not in self.ca_pem:
            raise UsageError("the mirror's CA file holds no PEM certificate")

    @classmethod
    def plain_http(cls) -> MirrorTrust:
        return cls("http", verify=False)

    @property
    def insecure(self) -> bool:
        """Plain HTTP or unchecked TLS: what registries.conf calls insecure."""
        return self.scheme == "http" or not self.verify

    @property
    def private_ca(self) -> str | None:
        """The CA clients need, where they check certificates at all."""
        return self.ca_pem if self.scheme == "https" and self.verify else None

    def describe(self) -> str:
        if self.scheme == "http":
            return "plain HTTP"
        if not self.verify:
            return "HTTPS, certificate not verified"
        return "HTTPS, private CA" if self.ca_pem else "HTTPS"


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
    # A platform subset whose upstream index the mirror refused (not sparse):
    # references pinned to the first digest must name the second there.
    repin: tuple[Digest, Digest] | None = None


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


def resource_name(bundle: str, suffix: str = "") -> str:
    """A valid Kubernetes object name (DNS-1123 subdomain) for any bundle name:
    `airbundle-BUNDLE[-SUFFIX]`, lowercased, other characters as '-', labels
    that start and end alphanumeric (`rel..1` -> `airbundle-rel.1`)."""
    text = f"airbundle-{bundle}" + (f"-{suffix}" if suffix else "")
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c == ".") else "-" for c in text.lower())
    labels = [label.strip("-")[:_LABEL_LIMIT].strip("-") for label in cleaned.split(".")]
    name = ".".join(label for label in labels if label)[:_NAME_LIMIT]
    return name.rstrip("-.") or "airbundle"


def _configmap_key(host: str) -> str:
    """OpenShift's key for a registry in the additionalTrustedCA ConfigMap."""
    return host.replace(":", "..")


def openshift(items: list[MirrorEntry], *, bundle: str) -> dict[str, str]:
    name = resource_name(bundle)
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


def _mirror_hosts(items: list[MirrorEntry]) -> list[str]:
    return sorted({e.mirror.split("/", 1)[0] for e in items})


def openshift_trust(items: list[MirrorEntry], *, bundle: str, trust: MirrorTrust) -> dict[str, str]:
    """The cluster side of the mirror's TLS: OpenShift's image config
    (`image.config.openshift.io/cluster`) naming a ConfigMap of CAs, or listing
    the mirror among the insecure registries. Nothing when the system trusts it."""
    hosts = _mirror_hosts(items)
    if not hosts or (not trust.insecure and trust.private_ca is None):
        return {}
    spec: dict[str, object]
    files: dict[str, str] = {}
    header = [
        f"# Generated by airbundle: how OpenShift's nodes trust the mirror ({trust.describe()}).",
        "# Apply: oc patch image.config.openshift.io/cluster --type merge --patch-file THIS_FILE",
    ]
    if trust.insecure:
        spec = {"registrySources": {"insecureRegistries": hosts}}
        header.append(
            "# A merge patch replaces the list: add these hosts to any insecureRegistries "
            "the cluster already has."
        )
    else:
        ca = trust.private_ca
        assert ca is not None
        configmap = resource_name(bundle, "ca")
        spec = {"additionalTrustedCA": {"name": configmap}}
        header += [
            f"# First: oc apply -f additionaltrustedca-configmap.yaml (ConfigMap {configmap} in "
            f"{OPENSHIFT_CONFIG_NAMESPACE}).",
            "# If the cluster already names an additionalTrustedCA ConfigMap, add the keys "
            "of ours to it instead.",
        ]
        data = {_configmap_key(host): ca for host in hosts}
        files["openshift/additionaltrustedca-configmap.yaml"] = _yaml(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": configmap, "namespace": OPENSHIFT_CONFIG_NAMESPACE},
                "data": data,
            }
        )
    document = {
        "apiVersion": "config.openshift.io/v1",
        "kind": "Image",
        "metadata": {"name": "cluster"},
        "spec": spec,
    }
    files["openshift/image-config-cluster.yaml"] = "\n".join(header) + "\n" + _yaml(document)
    return files


def containers_certs(items: list[MirrorEntry], *, trust: MirrorTrust) -> dict[str, str]:
    """certs.d/MIRROR/ca.crt for containers/image (CRI-O, podman, skopeo:
    /etc/containers/certs.d/) and Docker (/etc/docker/certs.d/)."""
    ca = trust.private_ca
    if ca is None:
        return {}
    return {f"containers/certs.d/{host}/ca.crt": ca for host in _mirror_hosts(items)}


def registries_conf(
    items: list[MirrorEntry], *, insecure: bool = False, trust: MirrorTrust | None = None
) -> str:
    """containers-registries.conf(5), version 2: one [[registry]] per source."""
    trust = trust or _trust(insecure)
    insecure = trust.insecure
    lines = [
        "# Generated by airbundle: redirects pulls of carried images to the mirror.",
        "# Merge into /etc/containers/registries.conf or drop into registries.conf.d/.",
    ]
    if trust.private_ca is not None:
        lines.append("# The mirror's CA: copy containers/certs.d/ into /etc/containers/certs.d/.")
    lines.append("")
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


def _trust(insecure: bool) -> MirrorTrust:
    return MirrorTrust.plain_http() if insecure else MirrorTrust()


def containerd(
    items: list[MirrorEntry], *, insecure: bool = False, trust: MirrorTrust | None = None
) -> dict[str, str]:
    """certs.d/<upstream-host>/hosts.toml per upstream registry.

    containerd mirrors a whole registry; a repository-level mapping works
    because our mappings are uniform per registry (prefix + upstream path).
    A private CA goes beside each hosts.toml as ca.crt (containerd reads a
    relative `ca` from the host's folder)."""
    trust = trust or _trust(insecure)
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
        url = f"{trust.scheme}://{mirror_host}/v2" + (f"/{path}" if path else "")
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
        if trust.scheme == "https" and not trust.verify:
            lines.append("  skip_verify = true")
        if trust.private_ca is not None:
            lines.append(f"  ca = {_toml_string(CONTAINERD_CA)}")
            files[f"containerd/certs.d/{host}/{CONTAINERD_CA}"] = trust.private_ca
        files[f"containerd/certs.d/{host}/hosts.toml"] = "\n".join(lines) + "\n"
    return files


CONTAINERD_CA = "ca.crt"


def _repins(images: list[CarriedImage]) -> list[dict[str, str]]:
    """Entries that rewrite a pin on an upstream index the mirror does not hold
    (it refused a sparse index) to the subset index it holds. kustomize matches
    `name` as written, digest included, so `nginx@sha256:UP` (and the same with
    the tag) is an entry of its own, listed before the plain name's."""
    out: list[dict[str, str]] = []
    for image in sorted(images, key=lambda i: str(i.ref)):
        if image.repin is None:
            continue
        upstream, subset = image.repin
        mirror = f"{image.mirror_host}/{image.mirror_repository}"
        for name in spellings(image.ref.name):
            suffixes = [f"@{upstream}"] + (
                [f":{image.ref.tag}@{upstream}"] if image.ref.tag else []
            )
            out += [{"name": name + s, "newName": mirror, "digest": str(subset)} for s in suffixes]
    return out


def kustomize(items: list[MirrorEntry], repins: list[CarriedImage] | None = None) -> str:
    """A kustomize `images:` list rewriting each carried name in every spelling
    that means it: kustomize compares names as written (`docker.io/nginx` is
    not `nginx` to it), so each spelling needs an entry of its own."""
    images = _repins(repins or [])
    for e in items:
        if "/" not in e.source:
            continue  # a registry-wide entry has no image name to rewrite
        try:
            names = spellings(ImageReference.parse(e.source + ":x").name)
        except FormatError:  # a name we cannot parse keeps its one spelling
            names = (e.source,)
        images += [{"name": n, "newName": e.mirror} for n in names]
    return _yaml({"images": images})


@dataclass(frozen=True)
class CarriedChart:
    """A Helm chart the bundle carries as an OCI artifact (one of its images)."""

    name: str
    version: str
    ref: ImageReference  # as carried


def helm_charts(
    images: Iterable[CarriedImage], charts: Iterable[CarriedChart], *, trust: MirrorTrust
) -> str:
    """A kustomize `helmCharts:` list pulling each carried chart from the mirror
    (`repo: oci://MIRROR/PATH`, `name`: the last path component, as Helm's OCI
    convention wants). The IDMS, ITMS and registries.conf entries already cover
    the charts' repositories, since charts travel as OCI artifacts."""
    where = {str(i.ref): f"{i.mirror_host}/{i.mirror_repository}" for i in images}
    entries = []
    for chart in sorted(charts, key=lambda c: (c.name, c.version)):
        mirror = where.get(str(chart.ref))
        if mirror is None:
            continue
        base, _, last = mirror.rpartition("/")
        entries.append({"name": last, "repo": f"oci://{base}", "version": chart.version})
    lines = [
        "# Generated by airbundle: the carried Helm charts at the mirror, for a",
        "# kustomization's helmCharts: (add releaseName, namespace, valuesInline...).",
    ]
    if trust.scheme == "http":
        lines.append("# The mirror speaks plain HTTP: helm needs --plain-http to pull from it.")
    elif not trust.verify:
        lines.append(
            "# The mirror's certificate is not checked: helm needs --insecure-skip-tls-verify."
        )
    return "\n".join(lines) + "\n" + _yaml({"helmCharts": entries})


def render_all(
    items: list[MirrorEntry],
    *,
    bundle: str,
    insecure: bool = False,
    trust: MirrorTrust | None = None,
    repositories: list[MirrorEntry] | None = None,
    repins: list[CarriedImage] | None = None,
    charts: Iterable[CarriedChart] = (),
    images: Iterable[CarriedImage] = (),
) -> dict[str, str]:
    """Every file for `items`. kustomize rewrites names, not registries, so it
    is given the per-repository entries (`repositories`) when `items` were
    collapsed per registry (--scope registry); `charts` (with the `images`
    saying where each landed) get a kustomize helmCharts list."""
    trust = trust or _trust(insecure)
    files = openshift(items, bundle=bundle)
    files.update(openshift_trust(items, bundle=bundle, trust=trust))
    files["registries.conf"] = registries_conf(items, trust=trust)
    files.update(containers_certs(items, trust=trust))
    try:
        files.update(containerd(items, trust=trust))
    except UsageError as exc:
        # Flattened or mixed mappings: say so instead of writing wrong files.
        files["containerd/NOT-GENERATED.txt"] = (
            f"containerd hosts.toml files were not generated: {exc.message}\n"
            "Use registries.conf (CRI-O, podman) or the kustomize image list instead.\n"
        )
    files["kustomize/images.yaml"] = kustomize(
        repositories if repositories is not None else items, repins
    )
    charts = list(charts)
    if charts:
        files["kustomize/helmcharts.yaml"] = helm_charts(images, charts, trust=trust)
    return files
