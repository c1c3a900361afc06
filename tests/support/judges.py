"""Reading back what an import left, from the outside: a target registry asked
directly (never through a proxy under test), and the import state files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from support.bundles import sha256
from support.oci import ACCEPT
from support.registry import Registry
from support.skopeo import skopeo_raw_manifest


def tags(reg: Registry, repo: str) -> list[str]:
    """The tags of ``repo`` (none if the repository does not exist)."""
    resp = reg.request("GET", f"/v2/{repo}/tags/list")
    if resp.status == 404:
        return []
    assert resp.status == 200, resp
    return sorted(resp.json().get("tags") or [])


def registry_state(reg: Registry) -> dict[str, dict[str, str]]:
    """repository -> {tag: sha256 of the manifest bytes skopeo reads back}."""
    repos = reg.request("GET", "/v2/_catalog").json().get("repositories") or []
    return {
        repo: {t: sha256(skopeo_raw_manifest(reg, f"{repo}:{t}")) for t in tags(reg, repo)}
        for repo in repos
    }


def assert_no_tags(reg: Registry, mirrored: Mapping[str, str]) -> None:
    """None of ``mirrored`` (repository -> tag) is tagged in ``reg``."""
    for repo, tag in mirrored.items():
        resp = reg.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        assert resp.status == 404, f"tag {repo}:{tag} exists after a failed import: {resp}"
        assert tags(reg, repo) == [], repo


def assert_complete(reg: Registry, repo: str, reference: str) -> None:
    """The manifest, every child manifest and every blob they name are in ``repo``."""
    resp = reg.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})
    assert resp.status == 200, f"{repo}@{reference}: {resp.status}"
    doc = resp.json()
    for child in doc.get("manifests") or []:
        assert_complete(reg, repo, child["digest"])
    for blob in [doc["config"], *doc["layers"]] if "config" in doc else []:
        head = reg.request("HEAD", f"/v2/{repo}/blobs/{blob['digest']}")
        assert head.status == 200, f"{repo}@{reference} lacks blob {blob['digest']}"


def recorded(state_dir: Path, manifest_digest: str) -> bool:
    """Whether any import state under ``state_dir`` records the bundle as accepted."""
    for path in state_dir.glob("target-*.json"):
        doc = json.loads(path.read_text())
        if any(c.get("manifestDigest") == manifest_digest for c in doc["channels"].values()):
            return True
    return False
