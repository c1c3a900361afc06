"""``python -m bench.startup [--reps N] [--code HASH]``: airbundle's start-up.

Runs, alternating, ``python -c pass`` (the interpreter alone), ``airbundle
--version`` and ``airbundle verify`` of the samples' tiny bundle, each as a
fresh process, and reports wall and CPU time (user + system of the child, from
``wait4``) as min / median / max, with the load average at each sample. On a
shared machine the wall clock of a 0.1 s command moves with everyone else's
work; its CPU time much less, and its minimum is what the code costs. The
start-up of a command is its time less the interpreter's.

``--importtime`` also prints the 15 slowest modules of ``-X importtime`` (self
time) for each command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT / "samples"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def commands(python: str, bundle: Path, trust: Path) -> dict[str, list[str]]:
    airbundle = [python, "-m", "airbundle"]
    return {
        "python -c pass": [python, "-c", "pass"],
        "airbundle --version": [*airbundle, "--version"],
        "airbundle verify (tiny)": [*airbundle, "verify", str(bundle), "--trust", str(trust), "-q"],
    }


def tiny_bundle(folder: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The samples' hello image (two tags, 5 blobs), exported and signed."""
    key = folder / "key"
    spec = folder / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: tiny}\nimages:\n"
        f"  - ref: oci:{SAMPLES / 'layouts' / 'hello'}:1.0\n"
        "    name: registry.example.com/team/hello:1.0\n"
    )
    bundle = folder / "tiny.airbundle"
    airbundle = [sys.executable, "-m", "airbundle"]
    for argv in (
        [*airbundle, "key", "generate", str(key)],
        [*airbundle, "export", str(spec), "-o", str(bundle), "--key", str(key), "-q"],
    ):
        subprocess.run(argv, env=env, cwd=folder, check=True, capture_output=True)
    return bundle, key.with_name("key.pub")


def importtime(argv: list[str], env: dict[str, str], cwd: Path, top: int = 15) -> list[str]:
    proc = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], env=env, cwd=cwd, capture_output=True, text=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            self_us, _cum, name = (p.strip() for p in line[len("import time:") :].split("|"))
            rows.append((int(self_us), name))
    return [f"{us / 1000:7.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:top]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--code", default=None, help="an airbundle snapshot of bench/out/cache/code")
    p.add_argument("--importtime", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "out" / "startup.json")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if args.code:
        code = HERE / "out" / "cache" / "code" / args.code
        env["PYTHONPATH"] = str(code)
    else:
        env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)  # not the repository: import the snapshot or the tree
        bundle, trust = tiny_bundle(cwd, env)
        cmds = commands(sys.executable, bundle, trust)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in cmds}
        for rep in range(args.reps):
            order = list(cmds) if rep % 2 == 0 else list(reversed(cmds))
            for name in order:
                load = os.getloadavg()[0]
                wall, cpu = _run(cmds[name], env, cwd)
                samples[name].append({"wall": wall, "cpu": cpu, "load": load})
        doc: dict[str, Any] = {"reps": args.reps, "commands": {}}
        base = samples["python -c pass"]
        for name, rows in samples.items():
            entry: dict[str, Any] = {
                "wall_s": _stats([r["wall"] for r in rows]),
                "cpu_s": _stats([r["cpu"] for r in rows]),
                "load": _stats([r["load"] for r in rows]),
            }
            if name != "python -c pass":
                entry["startup_cpu_s_min"] = round(
                    min(r["cpu"] for r in rows) - min(r["cpu"] for r in base), 4
                )
                entry["startup_cpu_s_median"] = round(
                    statistics.median(r["cpu"] for r in rows)
                    - statistics.median(r["cpu"] for r in base),
                    4,
                )
            doc["commands"][name] = entry
        print(json.dumps(doc, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        if args.importtime:
            for name, argv_ in cmds.items():
                print(f"\n{name}:")
                print("\n".join(importtime(argv_, env, cwd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
