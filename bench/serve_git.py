"""``python -m bench.serve_git``: how `serve --bundle` makes a servable repository
from a bundle's `repos/NAME.bundle` member, three ways measured side by side.

git http-backend needs a repository. The member is read from the bundle in place
(decoded from its frames) and must be hashed against the signed manifest before
anything of it is served:

* ``index-pack``: hash the member (one decode), then decode it again into
  ``git index-pack --strict --stdin`` (header skipped) and set the refs (what
  serve does: no copy of the bundle on disk);
* ``tee``: one decode, hashed while it is fed to ``index-pack``; the repository
  would be thrown away if the hash failed;
* ``clone``: one decode into a file in the cache, hashed on the way, then ``git
  clone --mirror`` of that file, which is deleted (a full copy of the bundle on
  disk for a while).

Two repositories: ``random`` (bench/datagen.build_git: incompressible blobs, no
deltas) and ``delta`` (text files edited a few lines per commit: deep delta chains,
index-pack resolves them). Wall and CPU seconds (this process and its children),
``--reps`` rounds alternating the methods. Results to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _cpu() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _git(*args: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], env=env, check=True, capture_output=True, **kw)


def delta_repo(repo: Path, commits: int, env: dict[str, str]) -> None:
    """Text files edited a few lines per commit, packed with deltas."""
    _git("init", "-q", "--bare", "-b", "main", str(repo), env=env)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet"], cwd=repo, stdin=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    rng = random.Random("bench-serve-git")  # noqa: S311 - seeded data
    files = {
        f"src/f{i:03d}.txt": [f"line {j} {rng.random()}\n" for j in range(400)] for i in range(300)
    }
    w = proc.stdin.write
    for c in range(1, commits + 1):
        w(f"commit refs/heads/main\nmark :{c}\ncommitter A <a@b> {1600000000 + c} +0000\n".encode())
        w(b"data 6\nchange\n")
        if c > 1:
            w(f"from :{c - 1}\n".encode())
        for name in list(files) if c == 1 else rng.sample(list(files), 3):
            lines = files[name]
            for _ in range(5):
                lines[rng.randrange(len(lines))] = f"edit {c} {rng.random()}\n"
            data = "".join(lines).encode()
            w(f"M 100644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    _git("-C", str(repo), "repack", "-a", "-d", "-q", env=env)


def export_repo(repo: Path, work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A bundle carrying the repository (airbundle export); (bundle, public key)."""
    key = work / "key"
    if not key.exists():
        subprocess.run(
            [sys.executable, "-m", "airbundle", "key", "generate", str(key)],
            env=env,
            check=True,
            capture_output=True,
        )
    spec = work / f"{repo.stem}.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata:\n  name: git\nrepos:\n"
        f"  - name: {repo.stem}\n    url: {repo}\n"
    )
    out = work / f"{repo.stem}.airbundle"
    subprocess.run(
        [
            *(sys.executable, "-m", "airbundle", "export", str(spec), "-o", str(out)),
            "--key",
            str(key),
            "--no-cache",
            "-q",
        ],
        env=env,
        check=True,
    )
    return out, key.with_name("key.pub")


def methods(bundle: Path, pub: Path) -> dict[str, Callable[[Path], None]]:
    sys.path.insert(0, str(REPO))
    from airbundle.adapters.bundle_git import build_repo
    from airbundle.adapters.git import run_git
    from airbundle.errors import TargetError
    from airbundle.format.trust import TrustPolicy
    from airbundle.ops.access import open_bundle_access
    from airbundle.ops.keys import load_trust

    access = open_bundle_access(bundle, TrustPolicy(tuple(load_trust([pub]))))
    entry = access.manifest.repos[0]
    member = access.member(entry.member)

    def chunks() -> Iterator[bytes]:
        reader = access.open_member(entry.member)
        yield from reader.iter_range(0, member.size, 1 << 20)

    def index_pack(dest: Path) -> None:
        access.verify_member(entry.member)
        build_repo(chunks(), dest, entry, what="bench")

    def tee(dest: Path) -> None:
        h = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks():
                h.update(chunk)
                yield chunk

        build_repo(hashed(), dest, entry, what="bench")
        assert h.hexdigest() == member.digest.hex

    def clone(dest: Path) -> None:
        copy = dest.with_name("copy.bundle")
        h = hashlib.sha256()
        with copy.open("wb") as out:
            for chunk in chunks():
                h.update(chunk)
                out.write(chunk)
        assert h.hexdigest() == member.digest.hex
        run_git(
            ["-c", "transfer.fsckObjects=true", "clone", "-q", "--mirror", str(copy), str(dest)],
            error=TargetError,
            what="bench",
        )
        copy.unlink()

    return {"index-pack": index_pack, "tee": tee, "clone": clone}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_git", description=__doc__)
    p.add_argument("--history-mib", type=int, default=100, help="the random repo's history")
    p.add_argument("--commits", type=int, default=6000, help="the delta repo's commits")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serve-git")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.config import GitPlan
    from bench.datagen import build_git

    work = Path(tempfile.mkdtemp(prefix="bench-serve-git-"))
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(work), "PYTHONPATH": str(REPO)}
    results: dict[str, Any] = {}
    try:
        build_git(GitPlan(2000, args.history_mib * MiB), work / "random.git", env, print)
        delta_repo(work / "delta.git", args.commits, env)
        for name in ("random", "delta"):
            bundle, pub = export_repo(work / f"{name}.git", work, env)
            ways = methods(bundle, pub)
            rounds: dict[str, dict[str, list[float]]] = {
                w: {"wall_s": [], "cpu_s": []} for w in ways
            }
            for rep in range(args.reps):
                for way, run in ways.items():
                    target = work / "out"
                    shutil.rmtree(target, ignore_errors=True)
                    target.mkdir()
                    t0, c0 = time.monotonic(), _cpu()
                    run(target / "r.git")
                    rounds[way]["wall_s"].append(time.monotonic() - t0)
                    rounds[way]["cpu_s"].append(_cpu() - c0)
                    print(f"{name} rep {rep + 1} {way}: {rounds[way]['wall_s'][-1]:.2f} s")
            results[name] = {
                "bundle_bytes": bundle.stat().st_size,
                "raw": rounds,
                "median": {
                    w: {k: statistics.median(v) for k, v in r.items()} for w, r in rounds.items()
                },
            }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        lines = ["| repo (bundle size) | method | wall (s) | CPU (s) |", "|---|---|---:|---:|"]
        for name, r in results.items():
            for way, m in r["median"].items():
                size = r["bundle_bytes"] / MiB
                lines.append(
                    f"| {name} ({size:.0f} MiB) | {way} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} |"
                )
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
