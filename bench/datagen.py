"""Deterministic benchmark data: OCI layouts with realistic gzip layers, and a git
repository with a long history made by ``git fast-import``.

Layers are tar streams of text-like files (pseudo-words with a Zipf distribution,
stitched from 32 KiB slices of an 8 MiB pool so gzip's 32 KiB window sees no
repeats) compressed with gzip level 6: about 3.2x, the way real text-heavy layers
compress. Git blobs are random bytes (incompressible), so the repository's pack is
as large as its history.

Everything goes into a cache folder, stamped with the plan's fingerprint; a
matching stamp means the data is reused as is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.config import GitPlan, ImagePlan, KiB, MiB, SizePlan

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

POOL_BYTES = 8 * MiB
SEGMENT = 32 * KiB
EXPECTED_RATIO = 3.2  # gzip -6 on the pool's text, measured

Log = Callable[[str], None]

_pool: bytes | None = None


def text_pool() -> bytes:
    """8 MiB of pseudo-words (Zipf-distributed, with punctuation and newlines)."""
    global _pool
    if _pool is None:
        rng = random.Random("bench-text-pool")  # noqa: S311 - seeded data
        syllables = "ka to re mi sa lo ne vu pa di ex or an in qu st th er on al ze bo ri fa"
        parts = syllables.split()
        words: set[str] = set()
        while len(words) < 12_000:
            words.add("".join(rng.choice(parts) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
        vocab = [w.encode() for w in sorted(words)]
        rng.shuffle(vocab)
        weights = list(itertools.accumulate(1 / (i + 1) ** 1.05 for i in range(len(vocab))))
        seps = [b" "] * 12 + [b", ", b". ", b"\n", b"=", b"/", b"_"]
        count = POOL_BYTES // 5
        tokens = rng.choices(vocab, cum_weights=weights, k=count)
        gaps = rng.choices(seps, k=count)
        _pool = b"".join(itertools.chain.from_iterable(zip(tokens, gaps, strict=True)))[:POOL_BYTES]
    return _pool


def _file_bytes(rng: random.Random, pool: bytes, size: int) -> bytes:
    out = []
    left = size
    while left > 0:
        take = min(SEGMENT, left)
        start = rng.randrange(len(pool) - take)
        out.append(pool[start : start + take])
        left -= take
    return b"".join(out)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def make_random_layer(blob_dir: str, key: str, size: int) -> tuple[str, int, str]:
    """A blob of exactly ``size`` bytes: a gzip magic, then seeded random bytes
    (stored raw by airbundle, incompressible for zstd, as gzip layers are; the
    diff_id is made up: nobody unpacks these)."""
    rng = random.Random(f"layer:{key}")  # noqa: S311 - seeded data
    blob_hash = hashlib.sha256()
    tmp = Path(blob_dir) / f".tmp-{key}"
    with tmp.open("wb") as out:
        left = size
        first = True
        while left:
            n = min(left, 4 * MiB)
            data = rng.randbytes(n)
            if first:
                data = b"\x1f\x8b" + data[2:]
                first = False
            out.write(data)
            blob_hash.update(data)
            left -= n
    digest = blob_hash.hexdigest()
    tmp.rename(Path(blob_dir) / digest)
    return digest, size, hashlib.sha256(f"diff:{key}".encode()).hexdigest()


def make_layer(blob_dir: str, key: str, size: int, kind: str = "text") -> tuple[str, int, str]:
    """Write one gzip layer of about ``size`` compressed bytes into ``blob_dir``.

    Returns (sha256 hex of the blob, blob size, sha256 hex of the tar = diff_id).
    """
    if kind == "random":
        return make_random_layer(blob_dir, key, size)
    pool = text_pool()
    rng = random.Random(f"layer:{key}")  # noqa: S311 - seeded data
    file_size = max(4 * KiB, min(MiB, (size * 3 // 8) // 512 * 512))
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing, mtime 0
    blob_hash = hashlib.sha256()
    tar_hash = hashlib.sha256()
    tmp = Path(blob_dir) / f".tmp-{key}"
    written = 0
    pending = 0  # uncompressed bytes fed since deflate last emitted output
    with tmp.open("wb") as out:

        def feed(data: bytes) -> None:
            nonlocal written, pending
            tar_hash.update(data)
            chunk = comp.compress(data)
            pending += len(data)
            if chunk:
                out.write(chunk)
                blob_hash.update(chunk)
                written += len(chunk)
                pending = 0

        index = 0
        while written + pending / EXPECTED_RATIO < size:
            data = _file_bytes(rng, pool, file_size)
            feed(_tar_header(f"usr/share/bench/{key}/part-{index:05d}.txt", len(data)))
            feed(data)
            index += 1
        feed(b"\0" * 1024)  # end of archive
        tail = comp.flush()
        out.write(tail)
        blob_hash.update(tail)
        written += len(tail)
    digest = blob_hash.hexdigest()
    tmp.rename(Path(blob_dir) / digest)
    return digest, written, tar_hash.hexdigest()


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, indent=None, separators=(",", ":"), sort_keys=True).encode()


def _write_blob(blob_dir: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blob_dir / digest).write_bytes(data)
    return digest, len(data)


def _write_layout(
    layout: Path, images: tuple[ImagePlan, ...], layers: dict[str, tuple[str, int, str]]
) -> list[dict[str, Any]]:
    blob_dir = layout / "blobs" / "sha256"
    entries = []
    described = []
    for image in images:
        infos = [layers[layer.key] for layer in image.layers]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"bench.image": f"{image.repo}:{image.tag}"},
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i[2]}" for i in infos]},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": layer.key}
                for layer in image.layers
            ],
        }
        cfg_digest, cfg_size = _write_blob(blob_dir, _json_bytes(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{cfg_digest}", "size": cfg_size},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{i[0]}", "size": i[1]}
                for i in infos
            ],
        }
        man_digest, man_size = _write_blob(blob_dir, _json_bytes(manifest))
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": f"sha256:{man_digest}",
                "size": man_size,
                "annotations": {REF_NAME: image.ref},
            }
        )
        described.append(
            {
                "repo": image.repo,
                "tag": image.tag,
                "ref": image.ref,
                "digest": f"sha256:{man_digest}",
                "bytes": sum(i[1] for i in infos) + cfg_size + man_size,
            }
        )
    (layout / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (layout / "index.json").write_bytes(_json_bytes(index))
    return described


def build_layouts(plan: SizePlan, root: Path, log: Log) -> dict[str, Any]:
    """Generate every layer (in parallel, largest first), then each dataset's layout."""
    jobs: dict[tuple[str, str], int] = {}
    kinds: dict[tuple[str, str], str] = {}
    for name, images in plan.image_sets().items():
        (root / name / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        for image in images:
            for layer in image.layers:
                jobs[(name, layer.key)] = layer.size
                kinds[(name, layer.key)] = layer.kind
    total = sum(jobs.values())
    log(f"generating {len(jobs)} gzip layers, {total / MiB:.1f} MiB compressed")
    start = time.monotonic()
    order = sorted(jobs, key=lambda k: -jobs[k])
    text_pool()  # built once here; forked workers inherit it
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("fork")) as pool:
        futures = {
            k: pool.submit(
                make_layer, str(root / k[0] / "blobs" / "sha256"), k[1], jobs[k], kinds[k]
            )
            for k in order
        }
        results = {k: f.result() for k, f in futures.items()}
    log(f"layers done in {time.monotonic() - start:.1f}s")
    datasets: dict[str, Any] = {}
    for name, images in plan.image_sets().items():
        layers = {key: info for (ds, key), info in results.items() if ds == name}
        described = _write_layout(root / name, images, layers)
        unique = sum(info[1] for info in layers.values())
        datasets[name] = {
            "layout": name,
            "images": described,
            "layers": len(layers),
            "bytes_referenced": sum(d["bytes"] for d in described),
            "bytes_unique_layers": unique,
        }
    return datasets


def _git(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], env=env, check=True, capture_output=True, **kw)


def build_git(plan: GitPlan, repo: Path, env: dict[str, str], log: Log) -> dict[str, Any]:
    if plan.shape == "text":
        return build_text_git(plan, repo, env, log)
    return build_random_git(plan, repo, env, log)


def _source_line(rng: random.Random, vocab: list[str]) -> str:
    indent = "    " * rng.choice((0, 1, 1, 2, 2, 3))
    return indent + " ".join(rng.choices(vocab, k=rng.randrange(2, 11)))


def build_text_git(plan: GitPlan, repo: Path, env: dict[str, str], log: Log) -> dict[str, Any]:
    """A history shaped like a real project's: 4,000 small text files in 200
    folders two levels deep; each commit edits 1 to 5 files (a few lines
    changed, added or removed); every 25 commits a topic branch of 2 to 6
    commits is merged back with a merge commit; an annotated tag every 400
    commits; five release branches kept. Made by git fast-import, repacked
    once (deltas, as a server's pack holds them), cached."""
    start = time.monotonic()
    _git(["init", "-q", "--bare", "-b", "main", str(repo)], env)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=repo,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    w = proc.stdin.write
    rng = random.Random("bench-git-text-history")  # noqa: S311 - seeded data
    vocab = text_pool()[: 256 * KiB].decode("ascii", "replace").split()[:5000]
    files: dict[str, list[str]] = {}
    for d in range(200):
        for f in range(20):
            path = f"src/m{d // 20:02d}/p{d:03d}/f{f:02d}.py"
            files[path] = [_source_line(rng, vocab) for _ in range(rng.randrange(10, 80))]
    paths = sorted(files)
    who = "Bench <bench@airbundle.invalid>"
    epoch = 1_600_000_000
    mark = 0
    clock = 0

    def data(blob: bytes) -> None:
        w(f"data {len(blob)}\n".encode() + blob + b"\n")

    def edit(commit_paths: list[str]) -> None:
        for path in commit_paths:
            lines = files[path]
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(lines) + 1)
                op = rng.random()
                if op < 0.5 and lines:
                    lines[min(at, len(lines) - 1)] = _source_line(rng, vocab)
                elif op < 0.8 or len(lines) < 5:
                    lines.insert(at, _source_line(rng, vocab))
                else:
                    del lines[min(at, len(lines) - 1)]
            w(f"M 100644 inline {path}\n".encode())
            data(("\n".join(lines) + "\n").encode())

    def commit(ref: str, parents: list[str], msg: str, changed: list[str]) -> int:
        nonlocal mark, clock
        mark += 1
        clock += 60
        w(f"commit {ref}\nmark :{mark}\n".encode())
        w(f"committer {who} {epoch + clock} +0000\n".encode())
        data(msg.encode())
        for i, parent in enumerate(parents):
            w(f"{'from' if i == 0 else 'merge'} {parent}\n".encode())
        if mark == 1:
            for path in paths:
                w(f"M 100644 inline {path}\n".encode())
                data(("\n".join(files[path]) + "\n").encode())
        edit(changed)
        return mark

    def pick() -> list[str]:
        return rng.sample(paths, rng.randrange(1, 6))

    main = commit("refs/heads/main", [], "initial import", [])
    made = 1
    tags = 0
    rounds = 0
    while made < plan.commits:
        rounds += 1
        if rounds % 20 == 0:
            topic = f"refs/heads/topic-{made}"
            tip = main
            for j in range(rng.randrange(2, 7)):
                tip = commit(topic, [f":{tip}"], f"topic {made} step {j}", pick())
                made += 1
            main = commit("refs/heads/main", [f":{main}", f":{tip}"], f"Merge topic {made}", [])
            w(f"reset {topic}\nfrom 0000000000000000000000000000000000000000\n\n".encode())
        else:
            main = commit("refs/heads/main", [f":{main}"], f"change {made}", pick())
        made += 1
        if made // 400 > tags:
            tags = made // 400
            msg = f"release {tags}\n".encode()
            w(f"tag v{tags}.0\nfrom :{main}\ntagger {who} {epoch + clock} +0000\n".encode())
            data(msg)
            if tags % (plan.commits // 400 // 5 or 1) == 0:
                w(f"reset refs/heads/release-{tags}\nfrom :{main}\n\n".encode())
    w(b"done\n")
    proc.stdin.close()
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")
    _git(["repack", "-a", "-d", "-q", "--window=10", "--depth=50"], env, cwd=repo)
    refs = _git(["for-each-ref", "--format=%(refname)"], env, cwd=repo).stdout.split()
    count = _git(["count-objects", "-v"], env, cwd=repo).stdout.decode()
    objects = int(next(x for x in count.splitlines() if x.startswith("in-pack:")).split()[1])
    pack_bytes = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    log(
        f"git history (text): {made} commits, {objects} objects, {len(refs)} refs, pack "
        f"{pack_bytes / MiB:.1f} MiB in {time.monotonic() - start:.1f}s"
    )
    return {"commits": made, "objects": objects, "refs": len(refs), "pack_bytes": pack_bytes}


def build_random_git(plan: GitPlan, repo: Path, env: dict[str, str], log: Log) -> dict[str, Any]:
    """A bare repository: ``plan.commits`` commits on main, each replacing one of
    1024 files with fresh random bytes; annotated tags every tenth of the way and
    three short release branches."""
    start = time.monotonic()
    _git(["init", "-q", "--bare", "-b", "main", str(repo)], env)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=repo,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    w = proc.stdin.write
    rng = random.Random("bench-git-history")  # noqa: S311 - seeded data
    per = plan.history_bytes // plan.commits
    tag_every = max(1, plan.commits // 10)
    branch_at = {plan.commits * k // 4: k for k in (1, 2, 3)}
    who = "Bench <bench@airbundle.invalid>"
    epoch = 1_600_000_000
    extra_mark = plan.commits + 1

    def commit(
        ref: str, mark: int, when: int, msg: str, path: str, blob: bytes, parent: str
    ) -> None:
        m = msg.encode()
        w(f"commit {ref}\nmark :{mark}\ncommitter {who} {when} +0000\ndata {len(m)}\n".encode())
        w(m + b"\n")
        if parent:
            w(f"from {parent}\n".encode())
        w(f"M 100644 inline {path}\ndata {len(blob)}\n".encode())
        w(blob + b"\n")

    for i in range(1, plan.commits + 1):
        size = rng.randrange(per // 2, per * 3 // 2 + 1)
        path = f"d{i % 32:02d}/f{(i // 32) % 32:02d}.bin"
        commit("refs/heads/main", i, epoch + 60 * i, f"change {i}", path, rng.randbytes(size), "")
        if i % tag_every == 0:
            msg = f"release {i // tag_every}\n".encode()
            w(f"tag v{i // tag_every}.0\nfrom :{i}\ntagger {who} {epoch + 60 * i} +0000\n".encode())
            w(f"data {len(msg)}\n".encode() + msg + b"\n")
        if i in branch_at:
            ref = f"refs/heads/release-{branch_at[i]}"
            for j in range(3):
                blob = rng.randbytes(per)
                parent = f":{i}" if j == 0 else ""
                when = epoch + 60 * i + j + 1
                commit(ref, extra_mark, when, f"fix {j} on {ref}", "NOTES.bin", blob, parent)
                extra_mark += 1
    w(b"done\n")
    proc.stdin.close()
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")
    _git(["repack", "-a", "-d", "-q"], env, cwd=repo)
    refs = _git(["for-each-ref", "--format=%(refname)"], env, cwd=repo).stdout.split()
    pack_bytes = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    log(
        f"git history: {plan.commits} commits, {len(refs)} refs, pack {pack_bytes / MiB:.1f} MiB "
        f"in {time.monotonic() - start:.1f}s"
    )
    return {"commits": plan.commits, "refs": len(refs), "pack_bytes": pack_bytes}


def ensure_data(plan: SizePlan, cache: Path, env: dict[str, str], log: Log) -> dict[str, Any]:
    """The cached data for ``plan`` (built first if missing or stale)."""
    stamp = cache / "data.json"
    fingerprint = plan.fingerprint()
    if stamp.is_file():
        data: dict[str, Any] = json.loads(stamp.read_text())
        if data.get("fingerprint") == fingerprint:
            log(f"reusing cached data in {cache}")
            return data
    log(f"building {plan.name} data in {cache}")
    if cache.exists():
        shutil.rmtree(cache)
    building = cache.with_name(cache.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    datasets = build_layouts(plan, building / "layouts", log)
    (building / "git").mkdir()
    datasets["git"] = build_git(plan.git, building / "git" / "history.git", env, log)
    data = {"fingerprint": fingerprint, "size": plan.name, "datasets": datasets}
    (building / "data.json").write_text(json.dumps(data, indent=1))
    building.rename(cache)
    return data
