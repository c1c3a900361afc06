"""The side-by-side runs: airbundle against the peer pipeline, alternating.

Datasets (bench/config.py): ``single`` (one multi-layer image), ``shared`` (images
sharing base layers), ``small`` (many small images), ``git`` (a long history).
Groups (``--only``): ``export``, ``verify``, ``import`` measure ``single`` and
``shared``; ``small-images`` measures export and import of ``small``; ``git``
measures export and import of ``git``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import zstandard

from bench import physical
from bench.config import MiB, SizePlan
from bench.measure import (
    DEFAULT_TIMEOUT,
    BenchError,
    Sample,
    install_git_shim,
    run_airbundle,
    run_peer,
)

TESTS = Path(__file__).resolve().parent.parent / "tests"
GROUPS = ("export", "verify", "import", "git", "small-images")
Log = Callable[[str], None]


def servers_module() -> Any:
    """The test servers bench starts (Registry, GitDaemon, push_oci_layout) from
    tests/support, imported from tests/ (bench is not run by pytest)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    git_daemon = importlib.import_module("support.git_daemon")
    registry = importlib.import_module("support.registry")
    skopeo = importlib.import_module("support.skopeo")
    return SimpleNamespace(
        Registry=registry.Registry,
        GitDaemon=git_daemon.GitDaemon,
        push_oci_layout=skopeo.push_oci_layout,
    )


@dataclass
class Dataset:
    name: str
    images: list[dict[str, Any]]  # repo, tag, ref, digest, bytes
    layout: Path | None
    repo: str | None  # git repository name ("history") if the dataset is a repo
    info: dict[str, Any]


@dataclass
class Row:
    group: str
    step: str
    dataset: str
    ab: list[Sample] = field(default_factory=list)
    peer: list[Sample] = field(default_factory=list)
    # The second peer, `skopeo sync` (+ tar | zstd), where it applies.
    sync: list[Sample] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # sides that failed: not run again


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def tar_stream_bytes(path: Path) -> int:
    """Bytes of the uncompressed stream in a .zst file."""
    total = 0
    with path.open("rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
        while chunk := reader.read(1 << 22):
            total += len(chunk)
    return total


class Bench:
    def __init__(
        self,
        plan: SizePlan,
        data: dict[str, Any],
        cache: Path,
        work: Path,
        env: dict[str, str],
        reps: int,
        groups: set[str],
        log: Log,
        timeout: float = DEFAULT_TIMEOUT,
        peers: frozenset[str] = frozenset({"loop", "sync"}),
    ) -> None:
        self.plan = plan
        self.peers = peers
        self.cache = cache
        self.work = work
        self.env = env
        self.reps = reps
        self.groups = groups
        self.log = log
        self.servers = servers_module()
        self.rows: list[Row] = []
        self.bundles: dict[str, dict[str, Any]] = {}
        self.limits: dict[str, Any] = {}
        self.startup: dict[str, Any] = {}
        self.counter = 0
        self.timeout = timeout
        self.errors: list[dict[str, Any]] = []
        self.git_shim = install_git_shim(work / "git-shim")
        ds = data["datasets"]
        self.datasets = {
            name: Dataset(name, ds[name]["images"], cache / "layouts" / name, None, ds[name])
            for name in ("single", "shared", "small")
        }
        self.datasets["git"] = Dataset("git", [], None, "history", ds["git"])

    # --- plumbing ---------------------------------------------------------

    def scratch(self, what: str) -> Path:
        self.counter += 1
        path = self.work / f"{self.counter:04d}-{what}"
        path.mkdir(parents=True)
        return path

    def airbundle(self, argv: list[str], scratch: Path) -> Sample:
        return run_airbundle(argv, self.env, scratch, self.git_shim, timeout=self.timeout)

    def peer(
        self, phases: list[tuple[str, list[list[str]]]], scratch: Path, *, capture: bool = False
    ) -> Sample:
        return run_peer(phases, self.env, scratch, capture=capture, timeout=self.timeout)

    @staticmethod
    def skopeo(*args: str) -> list[str]:
        return ["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "-q", *args]

    # --- sources ----------------------------------------------------------

    @contextmanager
    def sources(self) -> Iterator[None]:
        """The source registry (seeded) and the source git daemon, for the whole run."""
        with ExitStack() as stack:
            self.src = stack.enter_context(self.servers.Registry(self.work / "src-registry"))
            self._seed_registry()
            self.src_git = stack.enter_context(
                self.servers.GitDaemon(self.cache / "git", workdir=self.work / "src-git-daemon")
            )
            self.key = self.work / "key" / "bench"
            self.key.parent.mkdir()
            argv = ["key", "generate", str(self.key), "--comment", "bench"]
            run_airbundle(argv, self.env, self.scratch("key"), timeout=max(self.timeout, 120))
            yield

    def _seed_registry(self) -> None:
        """Hard-link the cached registry storage in, or push every image with skopeo
        (``--all --preserve-digests``) and cache the storage for next time."""
        needed = self.image_datasets()
        everything = [n for n, ds in self.datasets.items() if ds.layout]
        # A run of some groups pushes only their images (the scale size's 20 GiB
        # shared set is not pushed for a run of its git and small images).
        name = "registry" if needed == everything else "registry-" + "-".join(needed)
        if (self.cache / "registry" / "ready").is_file():
            name = "registry"  # every image: a superset serves any group
        cached = self.cache / name
        storage = self.src.storage
        if (cached / "ready").is_file():
            subprocess.run(["cp", "-al", str(cached / "docker"), str(storage)], check=True)
            self.log("source registry seeded from the cache (hard links)")
            return
        if not needed:
            return
        start = time.monotonic()
        jobs = [(self.datasets[n].layout, img) for n in needed for img in self.datasets[n].images]

        def push(job: tuple[Path, dict[str, Any]]) -> None:
            layout, img = job
            self.servers.push_oci_layout(
                self.src, layout, img["ref"], f"{img['repo']}:{img['tag']}"
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(push, jobs))
        self.log(
            f"pushed {len(jobs)} images to the source registry in {time.monotonic() - start:.1f}s"
        )
        if cached.exists():
            shutil.rmtree(cached)
        cached.mkdir()
        subprocess.run(["cp", "-al", str(storage / "docker"), str(cached / "docker")], check=True)
        (cached / "ready").write_text("ok\n")

    def image_datasets(self) -> list[str]:
        """The image datasets the selected groups read from the source registry."""
        needed = []
        if self.groups & {"export", "verify", "import"}:
            needed += ["single", "shared"]
        if "small-images" in self.groups:
            needed.append("small")
        return needed

    # --- the steps --------------------------------------------------------

    def run(self) -> None:
        self.limits = physical.measure(
            self.work,
            [ds.layout / "blobs" / "sha256" for ds in self.datasets.values() if ds.layout],
            self.plan.dd_mib,
            self.plan.probe_mib,
        )
        self.log("physical limits measured")
        runs = [
            run_airbundle(["--version"], self.env, self.scratch("startup"), timeout=120)
            for _ in range(3)
        ]
        self.startup = {
            "median_s": round(median([r.wall_s for r in runs]), 4),
            "peak_rss_mib": round(max(r.rss_kib for r in runs) / 1024, 1),
        }
        self.log(f"airbundle start-up: {self.startup['median_s']:.2f}s")
        for name in ("single", "shared"):
            wanted = [g for g in ("export", "verify", "import") if g in self.groups]
            if wanted:
                self.dataset_steps(
                    name, "export" in wanted, "verify" in wanted, "import" in wanted, group=None
                )
        if "small-images" in self.groups:
            self.dataset_steps("small", True, False, True, group="small-images")
        if "git" in self.groups:
            self.dataset_steps("git", True, False, True, group="git")

    def dataset_steps(
        self, name: str, export: bool, verify: bool, import_: bool, *, group: str | None
    ) -> None:
        """Export (measured, or once to have bundles), then verify and import. A failed
        or timed-out command ends its side of the row (recorded with the error; the
        other side still runs); a failed export ends the dataset."""
        ds = self.datasets[name]
        row = Row(group or "export", "export", name)
        if export:
            self.rows.append(row)
        self.export(ds, self.reps if export else 1, row)
        if row.failed:
            return
        try:
            if verify:
                row = Row("verify", "verify", name)
                self.rows.append(row)
                self.verify(ds, row)
            if import_:
                row = Row(group or "import", "import", name)
                self.rows.append(row)
                self.import_(ds, row)
        finally:
            for side in ("ab", "peer", "sync"):
                if side in self.bundles[name]:
                    self.bundles[name][side].unlink(missing_ok=True)

    def _measure(
        self,
        row: Row,
        side: str,
        rep: int,
        scratch: Path,
        fn: Callable[[], Sample],
        check: Callable[[Sample], None] | None = None,
        cleanup: bool = True,
    ) -> Sample | None:
        """Run one measured command (then its untimed ``check``). A failure is recorded
        in the row, its side is marked failed, and None returned."""
        try:
            sample = fn()
            if check is not None:
                check(sample)
        except BenchError as exc:
            error = {"step": row.step, "dataset": row.dataset, "side": side, "rep": rep}
            error["error"] = str(exc)[-3000:]
            row.errors.append(error)
            row.failed.add(side)
            self.errors.append(error)
            self.log(f"{row.step} {row.dataset} {side} rep {rep}: FAILED: {str(exc)[:400]}")
            if cleanup:
                shutil.rmtree(scratch, ignore_errors=True)
            return None
        {"ab": row.ab, "peer": row.peer, "sync": row.sync}[side].append(sample)
        self.log(
            f"{row.step} {row.dataset} {side} rep {rep}: {sample.wall_s:.2f}s "
            f"(load {sample.load1:.1f})"
        )
        if cleanup:
            shutil.rmtree(scratch, ignore_errors=True)
        return sample

    def _order(self, rep: int, row: Row, ds: Dataset | None = None) -> list[str]:
        sides = ["ab", "peer"] if "loop" in self.peers else ["ab"]
        if ds is not None and self.with_sync(ds):
            sides.append("sync")
        if rep % 2:
            sides.reverse()
        return [side for side in sides if side not in row.failed]

    def with_sync(self, ds: Dataset) -> bool:
        """skopeo sync as a second peer: for the shared and small sets."""
        return ds.name in ("shared", "small") and "sync" in self.peers

    def export(self, ds: Dataset, reps: int, row: Row) -> None:
        out_dir = self.work / f"bundles-{ds.name}"
        spec = self.write_spec(ds)
        latest: dict[str, Path] = {}
        for rep in range(reps):
            for side in self._order(rep, row, ds):
                scratch = self.scratch(f"export-{ds.name}-{side}")
                out = out_dir / f"{side}-{rep}.{'airbundle' if side == 'ab' else 'tar.zst'}"
                if side == "ab":
                    run = partial(self.airbundle, self.ab_export_argv(spec, out), scratch)
                elif side == "sync":
                    run = partial(self.peer, self._sync_export(ds, scratch, out), scratch)
                else:
                    run = partial(self.peer, self._peer_export(ds, scratch, out), scratch)
                if self._measure(row, side, rep, scratch, run) is None:
                    continue
                if side in latest:
                    latest[side].unlink()
                latest[side] = out
        if row.failed:
            return
        sizes = {side: latest[side].stat().st_size for side in latest}
        raw = {side: tar_stream_bytes(latest[side]) for side in latest}
        self.bundles[ds.name] = {**latest, "bytes": sizes, "raw": raw}
        row.extra = {"bundle_bytes": sizes, "stream_bytes": raw}

    def write_spec(self, ds: Dataset) -> Path:
        out_dir = self.work / f"bundles-{ds.name}"
        out_dir.mkdir(exist_ok=True)
        spec = out_dir / "spec.yaml"
        spec.write_text(self._spec(ds))
        return spec

    def ab_export_argv(self, spec: Path, out: Path) -> list[str]:
        return [
            "export",
            str(spec),
            "-o",
            str(out),
            "--key",
            str(self.key),
            "--no-cache",
            "--insecure-registry",
            self.src.host,
            "-q",
        ]

    def ab_verify_argv(self, bundle: Path) -> list[str]:
        return ["verify", str(bundle), "--trust", f"{self.key}.pub", "--json"]

    def ab_import_argv(self, bundle: Path, scratch: Path, reg: Any, git: Any) -> list[str]:
        argv = [
            "import",
            str(bundle),
            "--trust",
            f"{self.key}.pub",
            "--state-dir",
            str(scratch / "state"),
            "-q",
        ]
        if reg:
            argv += ["--registry", f"{reg.host}/mirror", "--insecure-registry", reg.host]
        if git:
            argv += ["--git", f"git://{git.host}/{{name}}.git"]
        return argv

    @contextmanager
    def import_targets(self, ds: Dataset, scratch: Path) -> Iterator[tuple[Any, Any]]:
        """A fresh target registry and/or git daemon (with an empty bare repo)."""
        with ExitStack() as stack:
            reg = git = None
            if ds.images:
                reg = stack.enter_context(self.servers.Registry(scratch / "target-registry"))
            if ds.repo:
                git = stack.enter_context(
                    self.servers.GitDaemon(scratch / "target-git", workdir=scratch / "git-daemon")
                )
                git.init_bare(f"{ds.repo}.git")
            yield reg, git

    def _spec(self, ds: Dataset) -> str:
        lines = [
            "apiVersion: airbundle/v1",
            "kind: BundleSpec",
            f"metadata: {{name: bench-{ds.name}}}",
        ]
        if ds.images:
            lines.append("images:")
            lines += [f"  - ref: {self.src.host}/{i['repo']}:{i['tag']}" for i in ds.images]
        if ds.repo:
            lines += [
                "repos:",
                f"  - name: {ds.repo}",
                f"    url: git://{self.src_git.host}/{ds.repo}.git",
            ]
        return "\n".join(lines) + "\n"

    def _peer_export(
        self, ds: Dataset, scratch: Path, out: Path
    ) -> list[tuple[str, list[list[str]]]]:
        phases: list[tuple[str, list[list[str]]]] = []
        members = []
        if ds.images:
            layout = scratch / "layout"
            phases.append(
                (
                    "skopeo-copy",
                    [
                        self.skopeo(
                            "--src-tls-verify=false",
                            "--src-no-creds",
                            f"docker://{self.src.host}/{i['repo']}:{i['tag']}",
                            f"oci:{layout}:{i['ref']}",
                        )
                        for i in ds.images
                    ],
                )
            )
            members.append("layout")
        if ds.repo:
            mirror = scratch / f"{ds.repo}.git"
            bundle = scratch / f"{ds.repo}.bundle"
            phases.append(
                (
                    "git-clone-mirror",
                    [
                        [
                            "git",
                            "clone",
                            "--mirror",
                            "-q",
                            f"git://{self.src_git.host}/{ds.repo}.git",
                            str(mirror),
                        ]
                    ],
                )
            )
            phases.append(
                (
                    "git-bundle-create",
                    [["git", "-C", str(mirror), "bundle", "create", "-q", str(bundle), "--all"]],
                )
            )
            members.append(bundle.name)
        phases.append(
            (
                "tar-zstd",
                [["tar", "-I", "zstd -T0 -3", "-cf", str(out), "-C", str(scratch), *members]],
            )
        )
        return phases

    def _sync_export(
        self, ds: Dataset, scratch: Path, out: Path
    ) -> list[tuple[str, list[list[str]]]]:
        """The second peer: `skopeo sync --src yaml --dest dir` (one folder per
        image, as sync writes them: no blob shared between images), tar | zstd."""
        repos: dict[str, list[str]] = {}
        for image in ds.images:
            repos.setdefault(image["repo"], []).append(image["tag"])
        lines = [f"{self.src.host}:", "  tls-verify: false", "  images:"]
        lines += [
            f"    {repo}: [{', '.join(json.dumps(t) for t in tags)}]"
            for repo, tags in repos.items()
        ]
        source = scratch / "sync.yaml"
        source.write_text("\n".join(lines) + "\n")
        sync = [
            "skopeo", "--insecure-policy", "sync", "--all", "--preserve-digests", "--scoped",
            "--src", "yaml", "--dest", "dir", str(source), str(scratch / "sync"),
        ]  # fmt: skip
        tar = ["tar", "-I", "zstd -T0 -3", "-cf", str(out), "-C", str(scratch), "sync"]
        return [("skopeo-sync", [sync]), ("tar-zstd", [tar])]

    def _sync_import(
        self, bundle: Path, scratch: Path, reg: Any
    ) -> list[tuple[str, list[list[str]]]]:
        x = scratch / "unpacked"
        script = 'set -o pipefail; mkdir -p "$2" && zstd -dc -- "$1" | tar -x -C "$2"'
        sync = [
            "skopeo", "--insecure-policy", "sync", "--all", "--preserve-digests",
            "--src", "dir", "--dest", "docker", "--dest-tls-verify=false", "--dest-no-creds",
            str(x / "sync" / self.src.host), f"{reg.host}/mirror",
        ]  # fmt: skip
        return [
            ("zstd-d|tar-x", [["bash", "-c", script, "peer-import", str(bundle), str(x)]]),
            ("skopeo-sync", [sync]),
        ]

    def verify(self, ds: Dataset, row: Row) -> None:
        bundles = self.bundles[ds.name]
        row.extra = {"bundle_bytes": bundles["bytes"], "stream_bytes": bundles["raw"]}

        def ab_check(sample: Sample) -> None:
            row.extra["verified_bytes"] = json.loads(sample.stdout)["bytes"]

        def peer_check(sample: Sample) -> None:
            if len(sample.stdout.split()[0]) != 64:
                raise BenchError(f"sha256sum printed {sample.stdout!r}")

        script = 'set -o pipefail; zstd -dc -- "$1" | sha256sum'
        cmd = ["bash", "-c", script, "peer-verify", str(bundles.get("peer"))]
        for rep in range(self.reps):
            for side in self._order(rep, row):
                scratch = self.scratch(f"verify-{ds.name}-{side}")
                if side == "ab":
                    run = partial(self.airbundle, self.ab_verify_argv(bundles["ab"]), scratch)
                    self._measure(row, side, rep, scratch, run, ab_check)
                else:
                    phases = [("zstd-d|sha256sum", [cmd])]
                    run = partial(self.peer, phases, scratch, capture=True)
                    self._measure(row, side, rep, scratch, run, peer_check)

    def import_(self, ds: Dataset, row: Row) -> None:
        bundles = self.bundles[ds.name]
        row.extra = {"bundle_bytes": bundles["bytes"], "stream_bytes": bundles["raw"]}
        for rep in range(self.reps):
            for side in self._order(rep, row, ds):
                scratch = self.scratch(f"import-{ds.name}-{side}")
                with self.import_targets(ds, scratch) as (reg, git):
                    if side == "ab":
                        argv = self.ab_import_argv(bundles["ab"], scratch, reg, git)
                        run = partial(self.airbundle, argv, scratch)
                    elif side == "sync":
                        phases = self._sync_import(bundles["sync"], scratch, reg)
                        run = partial(self.peer, phases, scratch)
                    else:
                        phases = self._peer_import(ds, bundles["peer"], scratch, reg, git)
                        run = partial(self.peer, phases, scratch)
                    check = partial(self._check_import, ds, reg, git, side)
                    self._measure(row, side, rep, scratch, run, check, cleanup=False)
                # Only now: the target servers have stopped writing into it.
                shutil.rmtree(scratch, ignore_errors=True)

    def _peer_import(
        self, ds: Dataset, bundle: Path, scratch: Path, reg: Any, git: Any
    ) -> list[tuple[str, list[list[str]]]]:
        x = scratch / "unpacked"
        script = 'set -o pipefail; mkdir -p "$2" && zstd -dc -- "$1" | tar -x -C "$2"'
        phases: list[tuple[str, list[list[str]]]] = [
            ("zstd-d|tar-x", [["bash", "-c", script, "peer-import", str(bundle), str(x)]])
        ]
        if reg is not None:
            phases.append(
                (
                    "skopeo-copy",
                    [
                        self.skopeo(
                            "--dest-tls-verify=false",
                            "--dest-no-creds",
                            f"oci:{x / 'layout'}:{i['ref']}",
                            f"docker://{reg.host}/mirror/{i['repo']}:{i['tag']}",
                        )
                        for i in ds.images
                    ],
                )
            )
        if git is not None:
            mirror = x / f"{ds.repo}.git"
            phases.append(
                (
                    "git-clone-bundle+push-mirror",
                    [
                        [
                            "git",
                            "clone",
                            "--mirror",
                            "-q",
                            str(x / f"{ds.repo}.bundle"),
                            str(mirror),
                        ],
                        [
                            "git",
                            "-C",
                            str(mirror),
                            "push",
                            "--mirror",
                            "-q",
                            f"git://{git.host}/{ds.repo}.git",
                        ],
                    ],
                )
            )
        return phases

    def _check_import(self, ds: Dataset, reg: Any, git: Any, side: str, _: Sample) -> None:
        """Not timed: every image is in the target with its digest, every ref arrived."""
        accept = ", ".join(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ]
        )
        if reg is not None:
            for img in ds.images:
                # skopeo sync from a dir names each image by its folder's last part.
                repo = img["repo"].rsplit("/", 1)[-1] if side == "sync" else img["repo"]
                resp = reg.request(
                    "HEAD",
                    f"/v2/mirror/{repo}/manifests/{img['tag']}",
                    headers={"Accept": accept},
                )
                got = resp.headers.get("docker-content-digest")
                if resp.status != 200 or got != img["digest"]:
                    catalog = reg.request("GET", "/v2/_catalog?n=20").body.decode(errors="replace")
                    raise BenchError(
                        f"{side} import of {ds.name}: mirror/{repo}:{img['tag']} is "
                        f"{resp.status} {got}, expected {img['digest']}; the target holds "
                        f"{catalog.strip()}"
                    )
        if git is not None:
            refs = subprocess.run(
                [
                    "git",
                    "ls-remote",
                    f"git://{git.host}/{ds.repo}.git",
                    "refs/heads/*",
                    "refs/tags/*",
                ],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            names = {line.split()[1] for line in refs if not line.endswith("^{}")}
            if len(names) != ds.info["refs"]:
                raise BenchError(
                    f"{side} import of {ds.name}: {len(names)} refs arrived, "
                    f"expected {ds.info['refs']}"
                )


# --- summary ------------------------------------------------------------------


def _side(samples: list[Sample]) -> dict[str, Any]:
    t = median([s.wall_s for s in samples])
    return {
        "median_s": round(t, 4) if samples else None,
        "min_s": round(min(s.wall_s for s in samples), 4) if samples else None,
        "max_s": round(max(s.wall_s for s in samples), 4) if samples else None,
        "times_s": [round(s.wall_s, 4) for s in samples],
        "cpu_s": [round(s.cpu_s, 3) for s in samples],
        "peak_rss_mib": round(max(s.rss_kib for s in samples) / 1024, 1) if samples else None,
        "cpu_s_median": round(median([s.cpu_s for s in samples]), 3),
        "load1": [round(s.load1, 2) for s in samples],
    }


def summarize(bench: Bench) -> dict[str, Any]:
    rows = []
    for row in bench.rows:
        ab = _side(row.ab)
        ab["git_children_peak_rss_mib"] = (
            round(max(s.children_rss_kib for s in row.ab) / 1024, 1) if row.ab else None
        )
        peer = _side(row.peer)
        phases: dict[str, float] = {}
        for name in row.peer[0].phases if row.peer else {}:
            phases[name] = round(median([s.phases[name] for s in row.peer]), 4)
        peer["phases_median_s"] = phases
        ab_t, peer_t = ab["median_s"], peer["median_s"]
        raw = row.extra.get("stream_bytes", {}).get("ab", 0)
        packed = row.extra.get("bundle_bytes", {}).get("ab", 0)
        limit = physical.limit_seconds(row.step, bench.limits, raw, packed) if raw else None
        all_cores = (
            physical.limit_seconds(row.step, bench.limits, raw, packed, all_cores=True)
            if raw
            else None
        )
        sync = _side(row.sync) if row.sync else None
        if sync is not None:
            sync["phases_median_s"] = {
                name: round(median([s.phases[name] for s in row.sync]), 4)
                for name in row.sync[0].phases
            }
        entry: dict[str, Any] = {
            "sync_peer": sync,
            "ratio_sync": round(ab_t / sync["median_s"], 3)
            if sync and ab_t and sync["median_s"]
            else None,
            "group": row.group,
            "step": row.step,
            "dataset": row.dataset,
            "complete": not row.errors,
            "airbundle": ab,
            "peer": peer,
            "ratio": round(ab_t / peer_t, 3) if ab_t and peer_t else None,
            "limit_s": round(limit, 4) if limit else None,
            "limit_fraction": round(limit / ab_t, 3) if limit and ab_t else None,
            "limit_fraction_all_cores": round(all_cores / ab_t, 3) if all_cores and ab_t else None,
            **row.extra,
            "errors": row.errors,
        }
        if peer_t and any(e["side"] == "ab" and "timed out" in e["error"] for e in row.errors):
            entry["ratio_at_least"] = round(bench.timeout / peer_t, 2)
        if row.step == "verify" and ab_t and peer_t:
            ab_raw = row.extra["stream_bytes"]["ab"]
            peer_raw = row.extra["stream_bytes"]["peer"]
            entry["throughput_mib_s"] = {
                "airbundle": round(ab_raw / ab_t / MiB, 1),
                "peer": round(peer_raw / peer_t / MiB, 1),
            }
            entry["throughput_ratio"] = round((ab_raw / ab_t) / (peer_raw / peer_t), 3)
        if row.step == "export" and row.dataset == "git":
            git_only = phases.get("git-clone-mirror", 0) + phases.get("git-bundle-create", 0)
            peer["clone_mirror_plus_bundle_s"] = round(git_only, 4)
            entry["ratio_vs_clone_plus_bundle"] = (
                round(ab_t / git_only, 3) if ab_t and git_only else None
            )
        if raw and ab_t:
            # Seconds per GiB of content: the scale comparison (issue 14) of a large
            # set with a small one, whatever the peer.
            entry["airbundle_s_per_gib"] = round(ab_t / (raw / (1 << 30)), 3)
        rows.append(entry)
    sizes = []
    for name, b in bench.bundles.items():
        if "peer" not in b["bytes"]:
            continue  # --no-peer
        sizes.append(
            {
                "dataset": name,
                "airbundle_bytes": b["bytes"]["ab"],
                "peer_bytes": b["bytes"]["peer"],
                "ratio": round(b["bytes"]["ab"] / b["bytes"]["peer"], 4),
                "sync_peer_bytes": b["bytes"].get("sync"),
            }
        )
    return {
        "rows": rows,
        "bundle_sizes": sizes,
        "targets": targets(rows, sizes),
        "errors": bench.errors,
        "airbundle_startup": bench.startup,
    }


Value = tuple[str, float | str | None]


def targets(rows: list[dict[str, Any]], sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured values it was judged on. A row
    whose command failed or timed out counts against its target."""
    out: list[dict[str, Any]] = []

    def add(name: str, values: list[Value], ok: Callable[[float], bool]) -> None:
        measured = [(what, v) for what, v in values if v is not None]
        if not measured:
            return
        out.append(
            {
                "target": name,
                "holds": all(isinstance(v, float | int) and ok(v) for _, v in measured),
                "measured": dict(measured),
            }
        )

    def pick(step: str, datasets: tuple[str, ...], key: str = "ratio") -> list[Value]:
        picked: list[Value] = []
        for r in rows:
            if r["step"] == step and r["dataset"] in datasets:
                failed = "; ".join(
                    f"{e['side']} {'timed out' if 'timed out' in e['error'] else 'failed'}"
                    for e in r["errors"]
                )
                picked.append((f"{r['step']}/{r['dataset']}", failed or r.get(key)))
        return picked

    add("export <= 0.6x peer", pick("export", ("single", "shared")), lambda v: v <= 0.6)
    add("import of one image <= 0.5x peer", pick("import", ("single",)), lambda v: v <= 0.5)
    add("import of a shared set <= 0.45x peer", pick("import", ("shared",)), lambda v: v <= 0.45)
    add(
        "verify >= 0.8 of the machine's floor",
        pick("verify", ("single",), "limit_fraction"),
        lambda v: v >= 0.8,
    )
    add(
        "small images export and import <= 0.3x peer",
        pick("export", ("small",)) + pick("import", ("small",)),
        lambda v: v <= 0.3,
    )
    add(
        "git export <= 1.05x clone --mirror + bundle create",
        pick("export", ("git",), "ratio_vs_clone_plus_bundle"),
        lambda v: v <= 1.05,
    )
    add("git import <= 0.55x peer", pick("import", ("git",)), lambda v: v <= 0.55)
    add(
        "airbundle peak RSS <= 128 MiB (every command)",
        [(f"{r['step']}/{r['dataset']}", r["airbundle"]["peak_rss_mib"]) for r in rows],
        lambda v: v <= 128,
    )
    add(
        "bundle size <= 1.01x peer",
        [(s["dataset"], s["ratio"]) for s in sizes],
        lambda v: v <= 1.01,
    )
    return out
