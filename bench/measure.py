"""Run one measured command in a fresh wrapper process and read its resource usage.

* airbundle runs *in process* inside a tiny ``python -c`` wrapper that imports
  ``airbundle.cli.main`` and, at exit, writes ``getrusage(RUSAGE_SELF)`` (airbundle's
  own peak RSS) and ``getrusage(RUSAGE_CHILDREN)`` (its git children) to a file.
  Its wall time is measured around the whole process, interpreter start included.
* the peer pipeline runs as a list of phases of commands inside a ``python -c``
  wrapper that times each phase and reports ``RUSAGE_CHILDREN``: ``ru_maxrss`` of
  the largest process of the pipeline (skopeo, git, tar, zstd ...). The wrapper's
  own start-up is not counted.

ru_maxrss is in KiB on Linux. A fresh wrapper per command makes the numbers per
command (RUSAGE_CHILDREN only ever grows within one process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AB_WRAPPER = r"""
import atexit, json, resource, sys
_out = sys.argv[1]
def _hwm():
    # VmHWM: this process image's own peak RSS. getrusage(RUSAGE_SELF).ru_maxrss is
    # not: Linux carries the spawning process's peak across fork/vfork + exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
def _report():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(_out, "w") as f:
        json.dump({"self_hwm_kib": _hwm(), "self_maxrss_kib": s.ru_maxrss,
                   "children_maxrss_kib": c.ru_maxrss,
                   "self_cpu_s": s.ru_utime + s.ru_stime,
                   "children_cpu_s": c.ru_utime + c.ru_stime}, f)
atexit.register(_report)
import os
if os.environ.get("BENCH_CPROFILE"):  # bench/profile.py: profile in process
    import cProfile
    _prof = cProfile.Profile()
    def _dump():
        _prof.disable()
        _prof.dump_stats(os.environ["BENCH_CPROFILE"])
    atexit.register(_dump)
    _prof.enable()
from airbundle.cli import main
sys.argv = ["airbundle", *sys.argv[2:]]
main(sys.argv[1:])
"""

# airbundle's git children inherit airbundle's own peak RSS in their ru_maxrss (the
# Linux exec rule above), so RUSAGE_CHILDREN cannot tell them apart. With GNU time
# installed, a `git` shim first on PATH records each git's own peak instead.
GNU_TIME = "/usr/bin/time"
GIT_SHIM = """#!/bin/sh
exec {time} -q -f %M -a -o "$BENCH_GIT_RSS_LOG" {git} "$@"
"""

PEER_WRAPPER = r"""
import json, resource, subprocess, sys, time
out_path, plan_path = sys.argv[1], sys.argv[2]
with open(plan_path) as f:
    plan = json.load(f)
phases, captured = [], []
start = time.monotonic()
for phase in plan["phases"]:
    t = time.monotonic()
    for argv in phase["cmds"]:
        r = subprocess.run(argv, env=plan["env"], cwd=plan.get("cwd"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.stderr.write("command failed (%d): %r\n%s" % (
                r.returncode, argv, r.stderr.decode(errors="replace")[-4000:]))
            sys.exit(1)
        if phase.get("capture"):
            captured.append(r.stdout.decode(errors="replace"))
    phases.append([phase["name"], time.monotonic() - t])
wall = time.monotonic() - start
c = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out_path, "w") as f:
    json.dump({"wall_s": wall, "phases": phases, "children_maxrss_kib": c.ru_maxrss,
               "children_cpu_s": c.ru_utime + c.ru_stime, "stdout": captured}, f)
"""

DEFAULT_TIMEOUT = 1800.0  # seconds per measured command (--timeout)
REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A measured command failed (the message carries its stderr tail)."""


class CommandTimeoutError(BenchError):
    """A measured command ran longer than the timeout (its process group was killed)."""


def _run(argv: list[str], env: dict[str, str], timeout: float, cwd: Path) -> tuple[int, str, str]:
    """Run in a new session; on timeout kill the whole group (git, skopeo, zstd...).
    ``cwd`` matters: ``python -c`` puts it first on sys.path, and the repository's
    root would shadow the airbundle snapshot."""
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandTimeoutError(f"timed out after {timeout:g}s: {' '.join(argv[-12:])}") from None
    return proc.returncode, out, err


def snapshot_airbundle(store: Path, reuse: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A frozen copy of the airbundle package, so that every run of one benchmark
    measures the same code even while the working tree changes under it.

    Snapshots are kept in ``store/<hash>`` (hash of the package's files); ``reuse``
    names one taken earlier, so that two sizes can be measured on the same code.
    Returns the folder to put first on PYTHONPATH and what it holds."""
    store.mkdir(parents=True, exist_ok=True)
    if reuse is not None:
        folder = store / reuse
        info_file = folder / "snapshot.json"
        if not info_file.is_file():
            raise BenchError(f"no airbundle snapshot {reuse!r} in {store}")
        return folder, json.loads(info_file.read_text())
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=store))
    dest = tmp / "airbundle"
    shutil.copytree(REPO / "airbundle", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for path in sorted(dest.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip()

    info: dict[str, Any] = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty_files": git("status", "--porcelain", "--", "airbundle").splitlines(),
        "tree_sha256": h.hexdigest()[:16],
    }
    (tmp / "snapshot.json").write_text(json.dumps(info, indent=1) + "\n")
    folder = store / info["tree_sha256"]
    if folder.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder, json.loads((folder / "snapshot.json").read_text())


@dataclass
class Sample:
    wall_s: float
    rss_kib: int  # airbundle: its own process; peer: the largest process of the pipeline
    children_rss_kib: int  # airbundle: its largest child (git); peer: same as rss_kib
    cpu_s: float  # user + system, all processes
    phases: dict[str, float] = field(default_factory=dict)
    stdout: str = ""
    load1: float = 0.0  # 1-minute load average when the command started

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 4),
            "rss_mib": round(self.rss_kib / 1024, 1),
            "children_rss_mib": round(self.children_rss_kib / 1024, 1),
            "cpu_s": round(self.cpu_s, 3),
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
        }


def install_git_shim(folder: Path) -> Path | None:
    """A folder holding the ``git`` shim (None without GNU time: then airbundle's git
    children's RSS is reported from RUSAGE_CHILDREN, an upper bound)."""
    git = shutil.which("git")
    if git is None or not Path(GNU_TIME).is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "git"
    shim.write_text(GIT_SHIM.format(time=GNU_TIME, git=git))
    shim.chmod(0o755)
    return folder


def run_airbundle(
    argv: list[str],
    env: dict[str, str],
    scratch: Path,
    shim: Path | None = None,
    prefix: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Sample:
    """``airbundle ARGV`` in a fresh interpreter; raises BenchError unless it exits 0.
    ``prefix`` runs the interpreter under another tool (a profiler)."""
    scratch.mkdir(parents=True, exist_ok=True)
    usage = scratch / "airbundle-rusage.json"
    usage.unlink(missing_ok=True)
    git_log = scratch / "git-rss.log"
    git_log.unlink(missing_ok=True)
    if shim is not None:
        env = {**env, "PATH": f"{shim}:{env.get('PATH', '')}", "BENCH_GIT_RSS_LOG": str(git_log)}
    load1 = os.getloadavg()[0]
    start = time.monotonic()
    code, out, err = _run(
        [*(prefix or []), sys.executable, "-c", AB_WRAPPER, str(usage), *argv],
        env,
        timeout,
        scratch,
    )
    wall = time.monotonic() - start
    if code != 0:
        raise BenchError(f"airbundle {' '.join(argv)} exited {code}:\n{err[-4000:]}")
    data = json.loads(usage.read_text())
    children = int(data["children_maxrss_kib"])
    if shim is not None:
        peaks = git_log.read_text().split() if git_log.exists() else []
        children = max((int(p) for p in peaks if p.isdigit()), default=0)
    return Sample(
        wall_s=wall,
        rss_kib=int(data["self_hwm_kib"]),
        children_rss_kib=children,
        cpu_s=float(data["self_cpu_s"]) + float(data["children_cpu_s"]),
        stdout=out,
        load1=load1,
    )


def run_peer(
    phases: list[tuple[str, list[list[str]]]],
    env: dict[str, str],
    scratch: Path,
    *,
    capture: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Sample:
    """Run the phases (each a list of argv) in order in a fresh wrapper process."""
    scratch.mkdir(parents=True, exist_ok=True)
    plan_file = scratch / "peer-plan.json"
    usage = scratch / "peer-rusage.json"
    usage.unlink(missing_ok=True)
    plan = {
        "env": env,
        "phases": [{"name": n, "cmds": cmds, "capture": capture} for n, cmds in phases],
    }
    plan_file.write_text(json.dumps(plan))
    load1 = os.getloadavg()[0]
    code, _, err = _run(
        [sys.executable, "-c", PEER_WRAPPER, str(usage), str(plan_file)], env, timeout, scratch
    )
    if code != 0:
        raise BenchError(f"peer pipeline failed:\n{err[-4000:]}")
    data = json.loads(usage.read_text())
    rss = int(data["children_maxrss_kib"])
    return Sample(
        wall_s=float(data["wall_s"]),
        rss_kib=rss,
        children_rss_kib=rss,
        cpu_s=float(data["children_cpu_s"]),
        phases={name: float(sec) for name, sec in data["phases"]},
        stdout="".join(data["stdout"]),
        load1=load1,
    )


def tool_env(home: Path) -> dict[str, str]:
    """One hermetic environment for both sides: no proxies, no user git config or
    registry credentials, HOME in the work folder."""
    home.mkdir(parents=True, exist_ok=True)
    drop = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in drop
        and not k.startswith(("GIT_", "REGISTRY_", "AIRBUNDLE_"))
        and k not in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "DOCKER_CONFIG")
    }
    env.update(
        {
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "REGISTRY_AUTH_FILE": str(home / "no-auth.json"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Bench",
            "GIT_AUTHOR_EMAIL": "bench@airbundle.invalid",
            "GIT_COMMITTER_NAME": "Bench",
            "GIT_COMMITTER_EMAIL": "bench@airbundle.invalid",
        }
    )
    return env
