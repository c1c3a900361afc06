"""``python -m bench [--size tiny|small|full] [--reps N] [--out DIR] [--only GROUPS]``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.config import SIZES
from bench.datagen import ensure_data
from bench.measure import DEFAULT_TIMEOUT, BenchError, snapshot_airbundle, tool_env
from bench.runner import GROUPS, Bench, summarize

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE / "out"  # git-ignored


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare airbundle with the hand-built peer pipeline (skopeo, git, tar, "
        "zstd) on the same generated data, against real servers on loopback.",
    )
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default: 1 tiny, 3 else)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/out/SIZE)")
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated subset of {','.join(GROUPS)}",
    )
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_ROOT / "cache", help="generated data (reused)"
    )
    p.add_argument(
        "--work", type=Path, default=None, help="scratch parent (default: beside the cache)"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--no-sync-peer",
        action="store_true",
        help="leave out the second peer (skopeo sync + tar | zstd) of the shared and small sets",
    )
    p.add_argument(
        "--no-peer",
        action="store_true",
        help="airbundle only, no peer at all: for sets too large for the peers' copies "
        "on this disk (the 20 GiB shared set: RSS and time per GiB against the 1 GiB image)",
    )
    p.add_argument(
        "--code",
        default=None,
        metavar="HASH",
        help="measure the airbundle snapshot HASH taken by an earlier run (results.json "
        "airbundle_code.tree_sha256) instead of a fresh copy of the working tree",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per measured command; a command that takes longer is killed and "
        "recorded as a failure of its row (default %(default)g)",
    )
    args = p.parse_args(argv)
    args.groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = args.groups - set(GROUPS)
    if unknown or not args.groups:
        p.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; use {','.join(GROUPS)}")
    return args


def _peers(args: argparse.Namespace) -> frozenset[str]:
    """"loop": the hand-written skopeo loop; "sync": `skopeo sync` + tar | zstd."""
    if args.no_peer:
        return frozenset()
    return frozenset({"loop"} if args.no_sync_peer else {"loop", "sync"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = SIZES[args.size]
    reps = args.reps or plan.reps
    out = (args.out or DEFAULT_ROOT / args.size).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    cache = (args.cache / args.size).resolve()
    work_parent = (args.work or cache.parent).resolve()
    work_parent.mkdir(parents=True, exist_ok=True)
    # Every airbundle run imports this frozen copy: others may edit the tree meanwhile.
    try:
        snapshot, code = snapshot_airbundle(cache.parent / "code", args.code)
    except BenchError as exc:
        log(str(exc))
        return 2
    pythonpath = os.pathsep.join(filter(None, [str(snapshot), os.environ.get("PYTHONPATH")]))
    probe = "import airbundle; print(airbundle.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=snapshot,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(snapshot)):
        log(f"cannot run the airbundle snapshot: {where} is imported instead")
        return 2
    log(f"measuring airbundle snapshot {code['tree_sha256']} (commit {code['commit']})")
    work = Path(tempfile.mkdtemp(prefix=f"work-{args.size}-", dir=work_parent))
    env = tool_env(work / "home")
    env["PYTHONPATH"] = pythonpath
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    try:
        data = ensure_data(plan, cache, env, log)
        bench = Bench(
            plan,
            data,
            cache,
            work,
            env,
            reps,
            args.groups,
            log,
            args.timeout,
            peers=_peers(args),
        )
        with bench.sources():
            bench.run()
        doc = {
            "schema": "airbundle-bench/1",
            "size": args.size,
            "reps": reps,
            "groups": sorted(args.groups),
            "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": report.machine(work),
            "airbundle_code": code,
            "loadavg_before_after": [list(load_before), list(os.getloadavg())],
            "rss_method": {
                "airbundle": "VmHWM of the airbundle process (/proc/self/status at exit)",
                "airbundle_git_children": "GNU time %M per git call (git shim on PATH)"
                if bench.git_shim
                else "getrusage(RUSAGE_CHILDREN): upper bound, includes airbundle's own peak",
                "peer": "getrusage(RUSAGE_CHILDREN) in a fresh wrapper: the largest process",
            },
            "datasets": data["datasets"],
            "limits": bench.limits,
            **summarize(bench),
        }
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = report.markdown(doc)
    (out / "results.md").write_text(md)
    print(md)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    if doc["errors"]:
        log(f"{len(doc['errors'])} command(s) failed or timed out: see 'errors' in results.json")
        return 1
    return 0
