"""Parity volumes: what they cost to write and how fast they rebuild.

    python -m bench.parity [--gib 5] [--volume-mib 512] [--parity 10%] [--work DIR]
                           [--kernel isa-l|python] [--runs 3] [--baseline SRC]

Builds a bundle of about ``--gib`` GiB (already-compressed layers, as most of
a real export is: zstd stores them raw), then in child processes (so each
peak RSS is its own):

* ``split``: cuts it into volumes of ``--volume-mib`` without and with
  ``--parity`` (the writer of a split export: the same VolumeWriter);
* ``rebuild``: with one data volume deleted, reads the lost volume through
  the reading layer verify and import use (rebuilt on the fly after the
  check against the signed index), and ``repair`` writes it back.

Each row: wall seconds, user+sys CPU seconds, peak RSS, MiB/s (medians), and
the load average at each sample. Times are wall clock on whatever else the
machine runs: compare rows of one run. ``--baseline SRC`` (a folder holding
another version's ``airbundle`` package, e.g. ``git archive main airbundle |
tar -x -C SRC``) runs every case with that version too, alternating with this
checkout's, so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 1 << 20

_CHILD = r"""
import json, os, sys, time
from pathlib import Path
from airbundle.adapters.media import open_media
from airbundle.adapters.parity import repair_set
from airbundle.format.volumes import parse_parity
from airbundle.ops.keys import load_signing_key
from airbundle.ops.volumes import split_bundle
import airbundle
what, args = sys.argv[1], json.loads(sys.argv[2])
t0, c0 = time.perf_counter(), os.times()
moved = 0
if what == "split":
    key = load_signing_key(Path(args["key"]), passphrase=None)
    parity = parse_parity(args["parity"]) if args["parity"] else None
    out = Path(args["out"])
    split_bundle(Path(args["bundle"]), args["volume"], (key,), folder=out, parity=parity)
    moved = Path(args["bundle"]).stat().st_size
elif what == "read":
    media = open_media(Path(args["set"]))
    media.check_present()
    reader = media.repairing
    size = media.index.volumes[args["volume"]].size
    for off in range(0, size, 4 * 1024 * 1024):
        moved += len(reader.pread(args["volume"], off, min(4 * 1024 * 1024, size - off)))
    assert list(reader.rebuilt) == [media.index.volumes[args["volume"]].name]
    reader.close()
elif what == "repair":
    media = open_media(Path(args["set"]))
    result = repair_set(media.folder, media.index, media.description, Path(args["out"]))
    moved = sum((Path(args["out"]) / n).stat().st_size for n in result.written)
c1 = os.times()
status = Path("/proc/self/status").read_text().splitlines()
print(json.dumps({
    "wall": time.perf_counter() - t0,
    "cpu": (c1.user - c0.user) + (c1.system - c0.system),
    "rss_mib": next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024,
    "bytes": moved,
    "load": os.getloadavg()[0],
    "package": str(Path(airbundle.__file__).parent.parent),
}))
"""


_HERE = Path(__file__).resolve().parent.parent


def _child(
    what: str, args: dict[str, object], kernel: str | None, source: Path = _HERE
) -> dict[str, float]:
    """One case in a child process that imports airbundle from `source`."""
    env = dict(os.environ, PYTHONPATH=str(source))
    if kernel:
        env["AIRBUNDLE_ERASURE_KERNEL"] = kernel
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, what, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} with {source} failed:\n{proc.stderr}")
    out = proc.stdout
    result = json.loads(out)
    if Path(result.pop("package")) != source.resolve():
        raise SystemExit(f"the child imported airbundle from elsewhere than {source}")
    return {k: float(v) for k, v in result.items()}


def _bundle(work: Path, gib: float) -> tuple[Path, Path]:
    """A signed bundle of about `gib` GiB of incompressible layers."""
    from airbundle.format.archive import BundleWriter, prefix_upper_bound
    from airbundle.format.digest import Digest
    from airbundle.format.manifest import SEEK_TABLE_DRAFT, BundleManifest
    from airbundle.format.sshsig import sign
    from airbundle.ops.keys import generate_key, load_signing_key

    key_path = work / "key"
    generate_key(key_path, passphrase=None, comment="bench")
    key = load_signing_key(key_path, passphrase=None)
    layer = 256 * MiB
    count = max(1, round(gib * 1024 * MiB / layer))
    seed = os.urandom(layer)
    layers = [bytes([i]) + seed[1:] for i in range(count)]
    from dataclasses import replace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.crafting import blob, make_manifest

    members = [blob(data) for data in layers]
    manifest: BundleManifest = make_manifest(members, name="bench-parity")
    draft = replace(manifest, seek_table=SEEK_TABLE_DRAFT).to_bytes()
    path = work / "bench.airbundle"
    with path.open("wb") as fh:
        writer = BundleWriter(fh, prefix_capacity=prefix_upper_bound(len(draft), 1, 1024))
        for name, data in members:
            writer.add_bytes(name, data)
        data = replace(manifest, seek_table=writer.end_content()).to_bytes()
        writer.finish(data, [sign(data, key)])
    assert Digest.sha256_of(data)
    return path, key_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parity")
    parser.add_argument("--gib", type=float, default=5.0)
    parser.add_argument("--volume-mib", type=int, default=512)
    parser.add_argument("--parity", default="10%")
    parser.add_argument("--kernel", choices=["isa-l", "python"], default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None)
    opts = parser.parse_args(argv)
    versions = {"": _HERE}
    if opts.baseline is not None:
        versions = {"baseline: ": opts.baseline.resolve(), "": _HERE}
    with tempfile.TemporaryDirectory(dir=opts.work, prefix="bench-parity-") as tmp:
        work = Path(tmp)
        bundle, key = _bundle(work, opts.gib)
        volume = opts.volume_mib * MiB
        rows: dict[str, list[dict[str, float]]] = {}

        def case(label: str, what: str, args: dict[str, object], run: int, out: Path) -> None:
            # Versions alternate which goes first, so neither always meets
            # the other's page cache state or load. What a case writes is
            # removed after it, but for the last set with parity: the
            # rebuild cases read it.
            order = list(versions.items())
            for name, source in order if run % 2 == 0 else order[::-1]:
                subprocess.run(["rm", "-rf", str(out)], check=True)
                rows.setdefault(name + label, []).append(_child(what, args, opts.kernel, source))
            if what != "split" or args["parity"] is None:
                subprocess.run(["rm", "-rf", str(out)], check=True)

        for run in range(opts.runs):
            parity_set = work / f"parity-{run}"
            for label, parity in (("split", None), (f"split --parity {opts.parity}", opts.parity)):
                out = parity_set if parity else work / f"split-{run}"
                args = {"bundle": str(bundle), "key": str(key), "volume": volume}
                case(label, "split", {**args, "parity": parity, "out": str(out)}, run, out)
            (parity_set / "bench.airbundle.002").unlink()
            read = {"set": str(parity_set), "volume": 1}
            case("rebuild 1 volume (read)", "read", read, run, work / "nothing")
            repaired = work / f"r{run}"
            case(
                "repair 1 volume",
                "repair",
                {"set": str(parity_set), "out": str(repaired)},
                run,
                repaired,
            )
            subprocess.run(["rm", "-rf", str(parity_set)], check=True)
        print(
            f"bundle {bundle.stat().st_size / MiB:.0f} MiB, volumes {opts.volume_mib} MiB, "
            f"kernel {opts.kernel or 'default'}, {opts.runs} runs"
        )
        print(f"{'case':46} {'wall s':>7} {'CPU s':>7} {'MiB/s':>6} {'RSS MiB':>7}  load")
        for label, runs in rows.items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max(r["rss_mib"] for r in runs)
            rate = statistics.median(r["bytes"] / MiB / r["wall"] for r in runs)
            load = " ".join(f"{r['load']:.1f}" for r in runs)
            print(f"{label:46} {wall:7.2f} {cpu:7.2f} {rate:6.0f} {rss:7.0f}  {load}")


if __name__ == "__main__":
    main()
