"""Test support for charts and files: a static HTTP server on loopback (a Helm
chart repository, file downloads), charts packaged and indexes written by the
test itself (tarfile and yaml, not the product's code), a chart pushed into a
registry as `helm push` lays it out (with skopeo), and a registry's blobs read
back over the distribution API.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support.net import http_request
from support.process import Server, ThreadingServer
from support.registry import Registry
from support.skopeo import skopeo

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class StaticHttp(Server):
    """Python's static file server over `root` on 127.0.0.1; `.url`, and
    `.paths`: every path asked for, in order."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                paths.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self._on_stop(self._shutdown)

    def _shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_chart(
    name: str,
    version: str,
    *,
    values: str = "",
    app_version: str | None = None,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> bytes:
    """A packaged chart (.tgz) as `helm package` lays it out: NAME/Chart.yaml,
    NAME/values.yaml, NAME/templates/..."""
    chart: dict[str, Any] = {"apiVersion": "v2", "name": name, "version": version}
    if app_version is not None:
        chart["appVersion"] = app_version
    if annotations:
        chart["annotations"] = dict(annotations)
    files = {
        f"{name}/Chart.yaml": yaml.safe_dump(chart).encode(),
        f"{name}/values.yaml": values.encode(),
        f"{name}/templates/deployment.yaml": b"image: {{ .Values.image.repository }}\n",
        **{f"{name}/{k}": v for k, v in (extra or {}).items()},
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_repository(
    root: Path, charts: list[tuple[str, str, bytes]], *, digests: bool = True
) -> Path:
    """A static Helm repository: the .tgz files and an index.yaml listing them
    (relative URLs, sha256 digests as `helm repo index` writes them)."""
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, Any]]] = {}
    for name, version, data in charts:
        filename = f"{name}-{version}.tgz"
        (root / filename).write_bytes(data)
        entry: dict[str, Any] = {
            "apiVersion": "v2",
            "name": name,
            "version": version,
            "urls": [filename],
            "created": "2024-01-01T00:00:00Z",
        }
        if digests:
            entry["digest"] = hashlib.sha256(data).hexdigest()
        entries.setdefault(name, []).append(entry)
    index = {"apiVersion": "v1", "entries": entries, "generated": "2024-01-01T00:00:00Z"}
    (root / "index.yaml").write_text(yaml.safe_dump(index))
    return root


def push_chart(
    registry: Registry, layout: Path, repo: str, tag: str, chart: bytes, meta: dict[str, str]
) -> bytes:
    """Push a chart into `registry` as `helm push` lays it out (Helm's config and
    chart media types), through an OCI layout and skopeo; the manifest bytes."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict[str, Any]:
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    config = json.dumps(meta, separators=(",", ":")).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, **put(config)},
            "layers": [{"mediaType": HELM_CHART, **put(chart)}],
            "annotations": {"org.opencontainers.image.title": meta["name"]},
        },
        separators=(",", ":"),
    ).encode()
    desc = {"mediaType": OCI_MANIFEST, **put(manifest)}
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    skopeo(
        [
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{registry.host}/{repo}:{tag}",
        ],
        registry=registry,
    )
    return manifest


def registry_blob(registry: Registry, repo: str, digest: str) -> bytes:
    """A blob as the registry serves it (the distribution API, no client of ours)."""
    response = http_request(f"http://{registry.host}/v2/{repo}/blobs/{digest}")
    if response.status in (301, 302, 303, 307):
        response = http_request(response.headers["location"])
    assert response.status == 200, (repo, digest, response.status)
    return response.body
