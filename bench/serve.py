"""``python -m bench.serve``: `airbundle serve` against Debian's docker-registry,
serving the same image on the same machine, side by side in one run.

Three servers of one image: serve over the OCI layout (as import writes it),
serve over a bundle of it (``--bundle``, exported by ``airbundle export``), and
docker-registry (the image copied in by ``skopeo copy`` beforehand, not timed).
For each, ``--reps`` times, alternating (layout, bundle, registry, layout, ...):

* start-up: from spawning the server to its first 200 on ``/v2/``;
* pulls: ``--clients`` concurrent ``skopeo copy docker://... dir:`` of one
  multi-layer image (``--size`` MiB in 8 layers), wall time of all of them;
* manifest latency: ``wrk -c 32`` GETs of the manifest by tag for ``--seconds``
  (requests/s, p50, p99);
* peak RSS: VmHWM of the server process after both loads.

Then a large bundle (``--big-mib``, default 5 GiB, in 8 layers), exported in
the run: from spawning ``serve --bundle`` to its first 200 on ``/v2/``, to the
first manifest, and to the first byte of a layer (which waits for that layer's
hash), ``--reps`` times with a fresh cache each.

Layers are random bytes behind a gzip magic (what compressed layers are: the
bundle stores them raw). Results go to ``--out`` (results.json, results.md).
Loopback only; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
IMAGE = "registry.example.com/bench/app:1.0"
SERVED = "bench/app"  # what serve maps IMAGE's repository to
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(root: Path, total: int, layers: int = 8) -> str:
    """One image of `layers` random layers adding up to `total` bytes; its digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs = []
    for i in range(layers):
        size = total // layers
        path = blobs / f".tmp-{i}"
        h = hashlib.sha256()
        with path.open("wb") as fh:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MiB))
                if left == size:  # a gzip stream's magic, as a compressed layer starts
                    chunk = b"\x1f\x8b\x08\x00" + chunk[4:]
                h.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        path.rename(blobs / h.hexdigest())
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{h.hexdigest()}",
                "size": size,
            }
        )
    config = _write_blob(blobs, b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": descs,
        }
    ).encode()
    m = _write_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **m,
                "annotations": {"org.opencontainers.image.ref.name": IMAGE},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return str(m["digest"])


def make_bundle(layout: Path, out: Path, work: Path, env: dict[str, str]) -> Path:
    """`airbundle export` of the layout's image into `out` (a fresh key)."""
    key = work / "bench-key"
    if not key.exists():
        subprocess.run(
            [sys.executable, "-m", "airbundle", "key", "generate", str(key)],
            env=env,
            check=True,
            capture_output=True,
        )
    spec = out.with_suffix(".yaml")
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata:\n  name: bench\nimages:\n"
        f"  - ref: oci:{layout}\n    name: {IMAGE}\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "airbundle",
            "export",
            str(spec),
            "-o",
            str(out),
            "--key",
            str(key),
            "--no-cache",
            "-q",
        ],
        env=env,
        check=True,
        timeout=3600,
    )
    return out


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Seconds from spawn to the first 200 on /v2/."""
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        url = f"http://127.0.0.1:{self.port}/v2/"
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"{self.name} did not answer in 60 s")

    def peak_rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _get(port: int, path: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=600) as r:  # noqa: S310 - loopback http
        if r.status not in (200, 206):
            raise RuntimeError(f"{path}: {r.status}")
        return bytes(r.read())


def first_answers(server: Server) -> dict[str, float]:
    """Seconds from spawn to the first /v2/, the first manifest and the first
    byte of the first layer (which serve hashes in full before sending)."""
    t0 = time.monotonic()
    ping = server.start()
    base = f"/v2/{SERVED}"
    manifest = json.loads(_get(server.port, f"{base}/manifests/1.0", {"Accept": OCI_MANIFEST}))
    at_manifest = time.monotonic() - t0
    layer = manifest["layers"][0]["digest"]
    _get(server.port, f"{base}/blobs/{layer}", {"Range": "bytes=0-0"})
    return {"startup_s": ping, "manifest_s": at_manifest, "layer_byte_s": time.monotonic() - t0}


def pull(host: str, clients: int, work: Path, env: dict[str, str]) -> float:
    """Wall seconds for `clients` concurrent skopeo copies of the image into dir:."""
    dests = [work / f"pull-{i}" for i in range(clients)]
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                "skopeo",
                "copy",
                "-q",
                "--src-tls-verify=false",
                f"docker://{host}/{SERVED}:1.0",
                f"dir:{d}",
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for d in dests
    ]
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    wall = time.monotonic() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {err.decode(errors='replace')[-2000:]}")
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
    return wall


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def manifest_latency(host: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Accept: {OCI_MANIFEST}",
            f"http://{host}/v2/{SERVED}/manifests/1.0",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    if not (rps and p50 and p99) or "Non-2xx" in out:
        raise RuntimeError(f"wrk: {out[-2000:]}")
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1))}


@dataclass
class Side:
    startup_s: list[float] = field(default_factory=list)
    pull_s: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)

    def median(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.__dict__.items() if v}


def _serve_argv(port: int, *source: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "airbundle",
        "serve",
        "-q",
        *source,
        "--listen",
        f"127.0.0.1:{port}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    p.add_argument("--size", type=int, default=512, help="image size in MiB (8 layers)")
    p.add_argument("--clients", type=int, default=8, help="concurrent skopeo pulls")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--big-mib", type=int, default=5120, help="the large bundle for start-up (0: skip)"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serve")
    args = p.parse_args(argv)
    for tool in ("skopeo", "docker-registry", "wrk"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            print(f"{tool} not found: see scripts/install --test", file=sys.stderr)
            return 2
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update({"HOME": str(work / "home"), "REGISTRY_AUTH_FILE": str(work / "no-auth.json")})
    (work / "home").mkdir()
    servers: dict[str, Server] = {}
    try:
        layout = work / "layout"
        log(f"writing a {args.size} MiB image in 8 layers")
        digest = make_layout(layout, args.size * MiB)
        log("exporting it as a bundle")
        serve_env = {**env, "PYTHONPATH": str(REPO)}
        bundle = make_bundle(layout, work / "bench.airbundle", work, serve_env)
        key_pub = work / "bench-key.pub"
        reg_port, layout_port, bundle_port = _free_port(), _free_port(), _free_port()
        storage = work / "registry"
        (work / "registry.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            f"http:\n  addr: 127.0.0.1:{reg_port}\n"
        )
        registry_bin = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        servers = {
            "serve": Server(
                "serve",
                _serve_argv(layout_port, "--registry", f"oci:{layout}"),
                layout_port,
                serve_env,
                REPO,
                work / "serve.log",
            ),
            "serve-bundle": Server(
                "serve-bundle",
                _serve_argv(
                    bundle_port,
                    *("--bundle", str(bundle), "--trust", str(key_pub)),
                    *("--cache-dir", str(work / "cache")),
                ),
                bundle_port,
                serve_env,
                REPO,
                work / "serve-bundle.log",
            ),
            "docker-registry": Server(
                "docker-registry",
                [registry_bin, "serve", str(work / "registry.yml")],
                reg_port,
                # distribution reads REGISTRY_* variables as configuration.
                {k: v for k, v in env.items() if not k.startswith("REGISTRY_")},
                work,
                work / "registry.log",
            ),
        }
        reg = servers["docker-registry"]
        reg.start()
        subprocess.run(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"oci:{layout}:{IMAGE}",
                f"docker://127.0.0.1:{reg_port}/{SERVED}:1.0",
            ],
            env=env,
            check=True,
            timeout=1800,
        )
        reg.stop()
        sides = {name: Side() for name in servers}
        for rep in range(args.reps):
            for name, server in servers.items():
                side = sides[name]
                host = f"127.0.0.1:{server.port}"
                side.startup_s.append(server.start())
                try:
                    side.pull_s.append(pull(host, args.clients, work, env))
                    lat = manifest_latency(host, args.connections, args.seconds)
                    side.rps.append(lat["rps"])
                    side.p50_ms.append(lat["p50_ms"])
                    side.p99_ms.append(lat["p99_ms"])
                    side.rss_mib.append(server.peak_rss_mib())
                finally:
                    server.stop()
                last = {k: v[-1] for k, v in side.__dict__.items()}
                log(f"rep {rep + 1} {name}: {json.dumps(last)}")
        big = big_bundle(args, work, serve_env, log) if args.big_mib else {}
        doc = {
            "schema": "airbundle-bench-serve/2",
            "image_mib": args.size,
            "image_digest": digest,
            "bundle_bytes": bundle.stat().st_size,
            "clients": args.clients,
            "connections": args.connections,
            "seconds": args.seconds,
            "reps": args.reps,
            "cpus": os.cpu_count(),
            "loadavg_after": list(os.getloadavg()),
            "raw": {name: side.__dict__ for name, side in sides.items()},
            "median": {name: side.median() for name, side in sides.items()},
            "big": big,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / "results.md").write_text(table(doc))
        print(table(doc))
        return 0
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def big_bundle(
    args: argparse.Namespace, work: Path, env: dict[str, str], log: Any
) -> dict[str, Any]:
    """Start-up of serve --bundle over a large bundle: no pass over it first."""
    layout = work / "big-layout"
    log(f"writing a {args.big_mib} MiB image in 8 layers")
    make_layout(layout, args.big_mib * MiB)
    log("exporting it as a bundle")
    bundle = make_bundle(layout, work / "big.airbundle", work, env)
    shutil.rmtree(layout)
    port = _free_port()
    rounds: dict[str, list[float]] = {"startup_s": [], "manifest_s": [], "layer_byte_s": []}
    for rep in range(args.reps):
        cache = work / f"big-cache-{rep}"
        server = Server(
            "serve-big",
            _serve_argv(
                port,
                *("--bundle", str(bundle), "--trust", str(work / "bench-key.pub")),
                *("--cache-dir", str(cache)),
            ),
            port,
            env,
            REPO,
            work / "serve-big.log",
        )
        try:
            got = first_answers(server)
        finally:
            server.stop()
        for key, value in got.items():
            rounds[key].append(value)
        log(f"rep {rep + 1} serve --bundle of {args.big_mib} MiB: {json.dumps(got)}")
    return {
        "mib": args.big_mib,
        "bundle_bytes": bundle.stat().st_size,
        "raw": rounds,
        "median": {k: statistics.median(v) for k, v in rounds.items()},
    }


def table(doc: dict[str, Any]) -> str:
    m = doc["median"]
    s, b, r = m["serve"], m["serve-bundle"], m["docker-registry"]
    rows = [
        ("start-up to first answer (s)", "startup_s", "{:.2f}"),
        (f"{doc['clients']} clients pulling {doc['image_mib']} MiB (s)", "pull_s", "{:.2f}"),
        (f"manifest GET, {doc['connections']} clients (req/s)", "rps", "{:.0f}"),
        ("manifest GET p50 (ms)", "p50_ms", "{:.2f}"),
        ("manifest GET p99 (ms)", "p99_ms", "{:.2f}"),
        ("peak RSS (MiB)", "rss_mib", "{:.1f}"),
    ]
    lines = [
        f"| medians of {doc['reps']} runs | serve (layout) | serve --bundle | docker-registry "
        "| layout ratio | bundle ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        ratios = [x[key] / r[key] if r.get(key) else float("nan") for x in (s, b)]
        lines.append(
            f"| {label} | {fmt.format(s[key])} | {fmt.format(b[key])} | {fmt.format(r[key])} "
            f"| {ratios[0]:.2f}x | {ratios[1]:.2f}x |"
        )
    big = doc.get("big")
    if big:
        gib = big["bundle_bytes"] / (1 << 30)
        bm = big["median"]
        lines += [
            "",
            f"| serve --bundle of {gib:.1f} GiB, medians of {doc['reps']} runs | seconds |",
            "|---|---:|",
            f"| spawn to first answer (`/v2/`) | {bm['startup_s']:.2f} |",
            f"| spawn to first manifest | {bm['manifest_s']:.2f} |",
            f"| spawn to first byte of a {big['mib'] // 8} MiB layer (hashed first) "
            f"| {bm['layer_byte_s']:.2f} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
