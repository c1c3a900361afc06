"""Test support for `airbundle serve`: the server itself, the clients that judge it
(containerd, podman, a docker-registry pull-through cache, headless Chromium),
and OCI layouts written the way import writes them.

Everything runs on 127.0.0.1 in temporary folders, as in tests/servers.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import AIRBUNDLE, require_tool
from servers import Process, ServerError, _Server, clean_env, free_port, http_request, require_ip

from airbundle.adapters.oci_layout import OciLayoutTarget
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST
from airbundle.format.reference import ImageReference

_READY = re.compile(r"serving on (https?://\S+)")


class Serve(_Server):
    """`airbundle serve ARGS --listen 127.0.0.1:0`; `.url` once it listens."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"serve-{time.monotonic_ns()}.log"
        argv = [*AIRBUNDLE, "serve", *args]
        if "--listen" not in args:
            argv += ["--listen", "127.0.0.1:0"]
        self.process = Process(argv, self.log, env=clean_env(env))
        self._on_stop(self.process.stop)
        self.url = ""
        try:
            self.process.wait_ready(self._ready, timeout, "airbundle serve")
        except ServerError:
            self.stop()
            raise

    def _ready(self) -> bool:
        match = _READY.search(self.log.read_text(errors="replace"))
        if match:
            self.url = match.group(1)
        return bool(match)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def get(self, path: str, **kwargs: Any) -> Any:
        return http_request(self.url + path, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# --- layouts as import writes them ---------------------------------------------


@dataclass(frozen=True)
class Doc:
    digest: str
    size: int
    data: bytes
    media_type: str


def blob_of(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


class LayoutWriter:
    """Writes blobs, manifests and tags through the product's OciLayoutTarget,
    exactly as import does: blobs and manifests first, index.json last."""

    def __init__(self, root: Path) -> None:
        self.target = OciLayoutTarget(root)
        self.target.prepare()

    def blob(self, data: bytes) -> dict[str, Any]:
        digest, size = blob_of(data)
        self.target.write_blob(Digest.parse(digest), size, [data])
        return {"digest": digest, "size": size}

    def manifest(self, doc: dict[str, Any], media_type: str = OCI_MANIFEST) -> Doc:
        data = json.dumps(doc, separators=(",", ":")).encode()
        digest, size = blob_of(data)
        self.target.put_manifest("", Digest.parse(digest), media_type, data)
        return Doc(digest, size, data, media_type)

    def image(self, config: bytes, layers: Sequence[bytes], **extra: Any) -> Doc:
        c = self.blob(config)
        ls = [self.blob(layer) for layer in layers]
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer} for layer in ls
            ],
            **extra,
        }
        return self.manifest(doc)

    def tag(self, ref: str, doc: Doc) -> None:
        parsed = ImageReference.parse(ref)
        self.target.tag(self.target.locate(parsed), parsed, doc.media_type, doc.data)

    def finish(self) -> None:
        with self.target.locked():
            self.target.finish()


EMPTY_JSON = b"{}"
ARTIFACT_A = "application/vnd.example.sbom.v1"
ARTIFACT_B = "application/vnd.example.signature.v1"
ANNOTATION = "org.opencontainers.conformance.test"


@dataclass(frozen=True)
class Conformance:
    """The distribution-spec conformance suite's pull and discovery data, as a layout."""

    name: str  # repository as served
    tags: list[str]
    config: dict[str, Any]
    layer: dict[str, Any]
    layer_data: bytes
    manifest: Doc
    referrers: dict[str, str]  # digest -> annotation value
    by_type: dict[str, set[str]]  # artifactType -> referrer digests
    orphan: Doc  # refers to a subject that is not in the registry
    missing_subject: str


def conformance_layout(
    root: Path, source_repo: str = "registry.example.com/conformance/test"
) -> Conformance:
    w = LayoutWriter(root)
    layer_data = b"conformance layer " * 1000
    config_data = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    image = w.image(config_data, [layer_data])
    tags = [f"test{i}" for i in range(4)]
    for tag in tags:
        w.tag(f"{source_repo}:{tag}", image)
    empty = w.blob(EMPTY_JSON)
    subject = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image.size}
    referrers: dict[str, str] = {}
    by_type: dict[str, set[str]] = {}

    def refer(doc: Doc, artifact: str, note: str) -> None:
        referrers[doc.digest] = note
        by_type.setdefault(artifact, set()).add(doc.digest)
        w.tag(f"{source_repo}@{doc.digest}", doc)

    for n, artifact in enumerate((ARTIFACT_A, ARTIFACT_B)):
        blob = w.blob(f"referrer blob {n}".encode())
        # config.mediaType carries the artifact type...
        a = w.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": artifact, **empty},
                "layers": [{"mediaType": "application/octet-stream", **blob}],
                "subject": subject,
                "annotations": {ANNOTATION: f"config-{n}"},
            }
        )
        refer(a, artifact, f"config-{n}")
        # ...or artifactType does, with the empty config.
        b = w.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
                "layers": [{"mediaType": "application/octet-stream", **blob}],
                "subject": subject,
                "annotations": {ANNOTATION: f"layer-{n}"},
            }
        )
        refer(b, artifact, f"layer-{n}")
    index = w.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": ARTIFACT_B,
            "manifests": [],
            "subject": subject,
            "annotations": {ANNOTATION: "index"},
        },
        OCI_INDEX,
    )
    refer(index, ARTIFACT_B, "index")
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    orphan = w.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_A,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", **empty}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 12},
            "annotations": {ANNOTATION: "orphan"},
        }
    )
    w.tag(f"{source_repo}@{orphan.digest}", orphan)
    w.finish()
    config = json.loads(image.data)["config"]
    layer = json.loads(image.data)["layers"][0]
    return Conformance(
        "conformance/test",
        tags,
        config,
        layer,
        layer_data,
        image,
        referrers,
        by_type,
        orphan,
        missing,
    )


# --- clients as judges ----------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(url: str, profile: Path, *extra: str, timeout: float = 90) -> str:
    """Headless Chromium from Debian loading `url` with a fresh profile; its stdout."""
    binary = require_tool("chromium")
    proc = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env({"HOME": str(profile)}),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def podman(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """podman with its own storage (vfs) and run folders: nothing shared with the host."""
    binary = require_tool("podman")
    root.mkdir(parents=True, exist_ok=True)
    # podman refuses a run root longer than 50 characters.
    runroot = Path(tempfile.gettempdir()) / f"pm-{hashlib.sha256(bytes(root)).hexdigest()[:12]}"
    conf = root / "containers.conf"
    conf.write_text('[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n')
    return subprocess.run(
        [
            binary,
            "--root",
            str(root / "storage"),
            "--runroot",
            str(runroot),
            "--storage-driver",
            "vfs",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(
            {
                "CONTAINERS_CONF": str(conf),
                "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
                "XDG_RUNTIME_DIR": str(root / "xdg"),
                "HOME": str(root),
            }
        ),
        check=False,
    )


class Containerd(_Server):
    """A containerd daemon with its own root, state and socket (no CRI plugin)."""

    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        super().__init__()
        self.binary = require_tool("containerd")
        self.ctr_binary = require_tool("ctr")
        # A short folder: the socket path must fit in sun_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ctd-"))
        self.socket = self.dir / "c.sock"
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{workdir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.dir / "c.ttrpc"}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "containerd.log"
        self.process = Process([self.binary, "--config", str(config)], self.log, env=clean_env())
        self._on_stop(self.process.stop)
        self._on_stop(lambda: subprocess.run(["rm", "-rf", str(self.dir)], check=False))
        try:
            self.process.wait_ready(self._ready, timeout, "containerd")
        except ServerError:
            self.stop()
            raise

    def _ready(self) -> bool:
        return self.socket.exists() and self.ctr("version").returncode == 0

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ctr_binary, "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
        )


class PullThroughCache(_Server):
    """Debian's docker-registry configured as a pull-through cache (proxy.remoteurl)."""

    def __init__(self, workdir: Path, remote: str, timeout: float = 30.0) -> None:
        super().__init__()
        binary = require_tool("docker-registry")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "cache.log"
        self.port = free_port()
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: info}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'storage'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n"
            f"proxy: {{remoteurl: {remote}}}\n"
        )
        self.process = Process([binary, "serve", str(config)], self.log, env=clean_env())
        self._on_stop(self.process.stop)
        try:
            self.process.wait_ready(self._ready, timeout, "docker-registry (pull-through)")
        except ServerError:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            return http_request(f"http://127.0.0.1:{self.port}/v2/", timeout=1).status == 200
        except OSError:
            return False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def netns_mount_run(argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """servers.netns_run plus a mount namespace of its own: containerd unpacks
    layers through bind mounts, which root in a user namespace may make there."""
    unshare = require_tool("unshare")
    ip = require_ip()
    script = f'{ip} link set lo up && exec "$@"'
    return subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            *argv,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def skopeo_digest(ref: str, *args: str) -> str:
    """sha256 of the raw manifest skopeo gets for `ref`."""
    proc = subprocess.run(
        ["skopeo", *args, "inspect", "--raw", "--tls-verify=false", ref]
        if "--registries-conf" not in args
        else ["skopeo", *args, "inspect", "--raw", ref],
        capture_output=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


__all__ = [
    "Conformance",
    "Containerd",
    "LayoutWriter",
    "PullThroughCache",
    "Serve",
    "chromium",
    "conformance_layout",
    "netns_mount_run",
    "podman",
    "skopeo_digest",
]
