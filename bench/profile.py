"""Profile one airbundle command on the benchmark's data and servers.

    python -m bench.profile --size small --step import --dataset single [--tool py-spy]

Sets up exactly what ``python -m bench`` does (cached data, a seeded source
registry, a source git daemon, a fresh target per import), exports the bundle
first when the step needs one, then runs the step once under the profiler:

* ``py-spy`` (``pip install py-spy``): wall-clock sampling, idle time included, so
  waits on the network and on git children show; writes collapsed stacks
  (``pyspy.txt``, feed it to flamegraph.pl or speedscope) and prints the top frames;
* ``cprofile``: deterministic, in process; writes ``cprofile.pstats`` and prints
  the top functions by cumulative and own time;
* ``trace2``: git's own trace (``GIT_TRACE2_EVENT``) of every git process the
  command starts (and the processes those start: index-pack, rev-list,
  pack-objects, upload-pack); writes ``trace2.json`` and prints each one's
  wall time, start and end (seconds from the first), i.e. where a git export
  or import waits. A server's receive-pack is the server's, not traced.
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.cli import DEFAULT_ROOT
from bench.config import SIZES
from bench.datagen import ensure_data
from bench.measure import Sample, run_airbundle, snapshot_airbundle, tool_env
from bench.runner import Bench

_LINE = re.compile(r" \((.*):\d+\)$")


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Top frames of py-spy's collapsed stacks, by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(r" (\1)", f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        out.append(f"\ntop {top} by {title}:")
        out += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(out)


def summarize_trace2(path: Path) -> str:
    """Every git process of a trace2 event file: start, end and wall time (s)."""
    starts: dict[str, float] = {}
    rows: list[tuple[float, float, str]] = []
    argv: dict[str, str] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        sid, kind = event.get("sid", ""), event.get("event")
        if kind == "version":
            starts.setdefault(sid, _abs_time(event["time"]))
        elif kind == "start":
            argv[sid] = " ".join(event.get("argv", []))[:110]
        elif kind == "exit" and sid in starts:
            start = starts[sid]
            rows.append((start, start + float(event["t_abs"]), argv.get(sid, "?")))
    if not rows:
        return "no git process traced"
    first = min(r[0] for r in rows)
    out = ["  start    end   wall  command (nested sids are children of the line above)"]
    for start, end, cmd in sorted(rows):
        out.append(f"{start - first:7.2f} {end - first:6.2f} {end - start:6.2f}  {cmd}")
    return "\n".join(out)


def _abs_time(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--step", choices=("export", "verify", "import"), required=True)
    p.add_argument("--dataset", choices=("single", "shared", "small", "git"), required=True)
    p.add_argument("--tool", choices=("py-spy", "cprofile", "trace2"), default="py-spy")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=None, help="default bench/out/profile-...")
    p.add_argument("--cache", type=Path, default=DEFAULT_ROOT / "cache")
    p.add_argument(
        "--code",
        default=None,
        metavar="HASH",
        help="profile the airbundle snapshot HASH of an earlier benchmark run "
        "(default: the working tree)",
    )
    args = p.parse_args(argv)
    plan = SIZES[args.size]
    out = (args.out or DEFAULT_ROOT / f"profile-{args.size}-{args.step}-{args.dataset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    cache = (args.cache / args.size).resolve()
    work = Path(tempfile.mkdtemp(prefix=f"work-profile-{args.size}-", dir=cache.parent))
    env = tool_env(work / "home")
    if args.code:
        snapshot, _ = snapshot_airbundle(cache.parent / "code", args.code)
        env["PYTHONPATH"] = str(snapshot)
    try:
        data = ensure_data(plan, cache, env, log)
        # The group whose images the source registry must hold for the dataset.
        group = {"small": "small-images", "git": "git"}.get(args.dataset, "export")
        bench = Bench(plan, data, cache, work, env, 1, {group}, log)
        with bench.sources():
            ds = bench.datasets[args.dataset]
            spec = bench.write_spec(ds)
            bundle = work / "profiled.airbundle"
            scratch = bench.scratch("profile")
            prefix: list[str] = []
            run_env = dict(env)
            if args.tool == "py-spy":
                spy = shutil.which("py-spy")
                if spy is None:
                    log("py-spy not found: pip install py-spy")
                    return 2
                prefix = [spy, "record", "-r", str(args.rate), "--idle", "-f", "raw"]
                prefix += ["-o", str(out / "pyspy.txt"), "--"]
            elif args.tool == "trace2":
                (out / "trace2.json").unlink(missing_ok=True)
                run_env["GIT_TRACE2_EVENT"] = str(out / "trace2.json")
            else:
                run_env["BENCH_CPROFILE"] = str(out / "cprofile.pstats")

            def run(cmd: list[str]) -> Sample:
                return run_airbundle(cmd, run_env, scratch, None, prefix)

            if args.step == "export":
                sample = run(bench.ab_export_argv(spec, bundle))
            else:
                run_airbundle(bench.ab_export_argv(spec, bundle), env, bench.scratch("export"))
                if args.step == "verify":
                    sample = run(bench.ab_verify_argv(bundle))
                else:
                    with bench.import_targets(ds, scratch) as (reg, git):
                        sample = run(bench.ab_import_argv(bundle, scratch, reg, git))
        log(
            f"{args.step} {args.dataset} ({args.size}) under {args.tool}: {sample.wall_s:.2f}s "
            f"wall (profiler overhead included), airbundle peak RSS {sample.rss_kib / 1024:.1f} MiB"
        )
        if args.tool == "py-spy":
            summary = summarize_collapsed(out / "pyspy.txt")
        elif args.tool == "trace2":
            summary = summarize_trace2(out / "trace2.json")
        else:
            buf = io.StringIO()
            stats = pstats.Stats(str(out / "cprofile.pstats"), stream=buf)
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(30)
            summary = buf.getvalue()
        (out / "summary.txt").write_text(summary + "\n")
        print(summary)
        log(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
