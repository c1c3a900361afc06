"""Inventory of what the disconnected side's targets hold, for exact deltas."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

from airbundle.adapters import git
from airbundle.adapters.git_targets import BareRepoTarget, RemoteTarget, open_git_target
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import FormatError, TargetError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.inventory import Inventory
from airbundle.format.manifest import format_time
from airbundle.format.mapping import RegistryLocation
from airbundle.format.oci import parse_manifest
from airbundle.limits import DEFAULT_LIMITS, Limits


def _layout_blobs(root: Path) -> set[Digest]:
    folder = root / "blobs" / "sha256"
    if not folder.is_dir():
        raise UsageError(f"{root} is not an OCI layout (no blobs/sha256)")
    out = set()
    for path in folder.iterdir():
        try:
            out.add(Digest("sha256", path.name))
        except FormatError:
            continue  # temporary files of an interrupted import
    return out


def _registry_blobs(
    location: RegistryLocation, transport: Transport, limits: Limits
) -> set[Digest]:
    client = RegistryClient(location.host, transport, error=TargetError, limits=limits)
    repos: list[str] = []
    url = "/v2/_catalog?n=1000"
    while url:
        response = client.request("GET", url, scope="registry:catalog:*", what="list repositories")
        if response.status != 200:
            raise client.fail(response, f"list repositories of {location.host}")
        repos += json.loads(response.read_limited(64 << 20)).get("repositories") or []
        link = response.headers.get("link", "")
        url = link.split(";")[0].strip("<> ") if 'rel="next"' in link else ""
    prefix = location.prefix + "/" if location.prefix else ""
    found: set[Digest] = set()
    for repo in repos:
        if not repo.startswith(prefix):
            continue
        response = client.request(
            "GET", f"/v2/{repo}/tags/list", scope=client.scope(repo), what=f"tags of {repo}"
        )
        if response.status != 200:
            response.close()
            continue
        tags = json.loads(response.read_limited(64 << 20)).get("tags") or []
        pending = [urllib.parse.quote(t, safe="") for t in tags]
        seen: set[str] = set()
        while pending:
            ref = pending.pop()
            if ref in seen:
                continue
            seen.add(ref)
            fetched = client.get_manifest(repo, ref)
            found.add(fetched.digest)
            parsed = parse_manifest(
                fetched.data,
                declared_type=fetched.media_type or None,
                where=f"{repo}:{ref}",
                limits=limits,
            )
            pending += [str(c.digest) for c in parsed.children]
            found |= {b.digest for b in parsed.blobs}
    return found


def take_inventory(
    *,
    registry: str | None,
    git_target: str | None,
    repo_names: list[str],
    transport: Transport | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Inventory:
    if registry is None and git_target is None:
        raise UsageError("say what to inventory: --registry and/or --git")
    blobs: set[Digest] = set()
    target = []
    if registry is not None:
        target.append(f"images={registry}")
        if registry.startswith("oci:"):
            blobs = _layout_blobs(Path(registry[4:]))
        else:
            blobs = _registry_blobs(
                RegistryLocation.parse(registry), transport or Transport(), limits
            )
    repos: dict[str, dict[str, str]] = {}
    if git_target is not None:
        gits = open_git_target(git_target)
        target.append(f"git={git.redact(git_target)}")
        try:
            if isinstance(gits, BareRepoTarget):
                names = repo_names or sorted(p.name[:-4] for p in gits.root.glob("*.git"))
                for name in names:
                    if gits.path(name).exists():
                        repos[name] = dict(
                            git.list_refs(gits.path(name), error=TargetError, what=f"repo {name!r}")
                        )
            else:
                assert isinstance(gits, RemoteTarget)
                if not repo_names:
                    raise UsageError("a git URL template needs the repo names: --repo NAME")
                for name in repo_names:
                    proc = git.run_git(
                        ["ls-remote", "--", gits.url(name)],
                        error=TargetError,
                        what=f"repo {name!r}",
                    )
                    refs = {}
                    for line in proc.stdout.decode().splitlines():
                        oid, _, ref = line.partition("\t")
                        if ref.startswith("refs/") and not ref.endswith("^{}"):
                            refs[ref] = oid
                    repos[name] = refs
        finally:
            gits.close()
    return Inventory(format_time(datetime.now(UTC)), " ".join(target), tuple(sorted(blobs)), repos)
