"""``python -m bench.serve``: `airbundle serve` against Debian's docker-registry,
serving the same image on the same machine, side by side in one run.

For each server, ``--reps`` times, alternating (serve, registry, serve, ...):

* start-up: from spawning the server to its first 200 on ``/v2/``;
* pulls: ``--clients`` concurrent ``skopeo copy docker://... dir:`` of one
  multi-layer image (``--size`` MiB in 8 layers), wall time of all of them;
* manifest latency: ``wrk -c 32`` GETs of the manifest by tag for ``--seconds``
  (requests/s, p50, p99);
* peak RSS: VmHWM of the server process after both loads.

serve reads the OCI layout; the registry gets the same image by ``skopeo copy``
beforehand (not timed). Layers are random bytes (what compressed layers are).
Results go to ``--out`` (results.json, results.md). Loopback only; every load
is bounded in count and time.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    p.add_argument("--size", type=int, default=512, help="image size in MiB (8 layers)")
    p.add_argument("--clients", type=int, default=8, help="concurrent skopeo pulls")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration")
    p.add_argument("--reps", type=int, default=3)
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
    try:
        layout = work / "layout"
        log(f"writing a {args.size} MiB image in 8 layers")
        digest = make_layout(layout, args.size * MiB)
        reg_port, serve_port = _free_port(), _free_port()
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
                [
                    sys.executable,
                    "-m",
                    "airbundle",
                    "serve",
                    "-q",
                    "--registry",
                    f"oci:{layout}",
                    "--listen",
                    f"127.0.0.1:{serve_port}",
                ],
                serve_port,
                {**env, "PYTHONPATH": str(REPO)},
                REPO,
                work / "serve.log",
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
        doc = {
            "schema": "airbundle-bench-serve/1",
            "image_mib": args.size,
            "image_digest": digest,
            "clients": args.clients,
            "connections": args.connections,
            "seconds": args.seconds,
            "reps": args.reps,
            "cpus": os.cpu_count(),
            "loadavg_after": list(os.getloadavg()),
            "raw": {name: side.__dict__ for name, side in sides.items()},
            "median": {name: side.median() for name, side in sides.items()},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / "results.md").write_text(table(doc))
        print(table(doc))
        return 0
    finally:
        for server in locals().get("servers", {}).values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(doc: dict[str, Any]) -> str:
    s, r = doc["median"]["serve"], doc["median"]["docker-registry"]
    rows = [
        ("start-up to first answer (s)", "startup_s", "{:.2f}"),
        (f"{doc['clients']} clients pulling {doc['image_mib']} MiB (s)", "pull_s", "{:.2f}"),
        (f"manifest GET, {doc['connections']} clients (req/s)", "rps", "{:.0f}"),
        ("manifest GET p50 (ms)", "p50_ms", "{:.2f}"),
        ("manifest GET p99 (ms)", "p99_ms", "{:.2f}"),
        ("peak RSS (MiB)", "rss_mib", "{:.1f}"),
    ]
    lines = [
        f"| medians of {doc['reps']} runs | airbundle serve | docker-registry | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        ratio = s[key] / r[key] if r.get(key) else float("nan")
        lines.append(f"| {label} | {fmt.format(s[key])} | {fmt.format(r[key])} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
