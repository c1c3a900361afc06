"""results.json and results.md: the machine, the limits, the table, the targets."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.config import MiB


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return (proc.stdout or proc.stderr).strip()


def machine(work: Path) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = re.findall(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    df = _run(["df", "-hT", str(work)]).splitlines()
    source = _run(["findmnt", "-n", "-o", "SOURCE", "--target", str(work)])
    dev = Path(source).name if source.startswith("/dev/") else ""
    rotational = Path(f"/sys/block/{dev}/queue/rotational")
    import zstandard

    import airbundle

    return {
        "nproc": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "memory_mib": int(mem.group(1)) // 1024 if mem else None,
        "kernel": platform.release(),
        "disk": {
            "df": df[-1] if df else "",
            "device": source,
            "rotational": rotational.read_text().strip() == "1" if rotational.exists() else None,
        },
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "airbundle": airbundle.__version__,
        "tools": {
            "skopeo": _run(["skopeo", "--version"]),
            "git": _run(["git", "--version"]),
            "zstd": _run(["zstd", "--version"]),
            "tar": _run(["tar", "--version"]).splitlines()[0] if shutil.which("tar") else "",
            "docker-registry": _run(["docker-registry", "--version"]),
        },
    }


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| step | dataset | airbundle median s | peer median s | ratio | "
        "airbundle peak RSS MiB | airbundle git children RSS MiB | peer peak RSS MiB | "
        "fraction of physical limit |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        ratio = _f(r["ratio"])
        if r["errors"]:
            ratio = (
                "**"
                + ", ".join(
                    f"{'airbundle' if e['side'] == 'ab' else 'peer'} "
                    f"{'timed out' if 'timed out' in e['error'] else 'failed'} (rep {e['rep']})"
                    for e in r["errors"]
                )
                + "**"
            )
            if r.get("ratio_at_least"):
                ratio += f" (≥ {r['ratio_at_least']:.2f})"
        elif r["step"] == "verify" and "throughput_ratio" in r:
            ratio += f" (throughput {r['throughput_ratio']:.2f}x)"
        elif r.get("ratio_vs_clone_plus_bundle") is not None:
            ratio += f" ({r['ratio_vs_clone_plus_bundle']:.2f}x clone+bundle)"
        lines.append(
            f"| {r['step']} | {r['dataset']} | {_f(r['airbundle']['median_s'], 3)} | "
            f"{_f(r['peer']['median_s'], 3)} | {ratio} | {_f(r['airbundle']['peak_rss_mib'], 1)} | "
            f"{_f(r['airbundle']['git_children_peak_rss_mib'], 1)} | "
            f"{_f(r['peer']['peak_rss_mib'], 1)} | {_g(r['limit_fraction'])} |"
        )
    return head + "\n".join(lines) + "\n"


def spread(rows: list[dict[str, Any]]) -> str:
    """min / median / max per side, CPU medians, the second peer, load per sample."""
    head = (
        "| step | dataset | airbundle min / median / max s | peer min / median / max s | "
        "skopeo sync peer min / median / max s | ratio to sync | airbundle CPU s | "
        "load average per sample (airbundle; peer) |\n|---|---|---|---|---|---:|---|---|\n"
    )

    def mmm(side: dict[str, Any] | None) -> str:
        if not side or side.get("median_s") is None:
            return "—"
        return f"{side['min_s']:.3f} / {side['median_s']:.3f} / {side['max_s']:.3f}"

    lines = []
    for r in rows:
        ab, peer = r["airbundle"], r["peer"]
        loads = (
            ", ".join(f"{v:.1f}" for v in ab["load1"])
            + "; "
            + ", ".join(f"{v:.1f}" for v in peer["load1"])
        )
        lines.append(
            f"| {r['step']} | {r['dataset']} | {mmm(ab)} | {mmm(peer)} | "
            f"{mmm(r.get('sync_peer'))} | {_f(r.get('ratio_sync'))} | "
            f"{', '.join(f'{c:.2f}' for c in ab.get('cpu_s', []))} | {loads} |"
        )
    return head + "\n".join(lines) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    code = doc["airbundle_code"]
    dirty = f" + {len(code['dirty_files'])} uncommitted file(s)" if code["dirty_files"] else ""
    lim = doc["limits"]
    out = [
        f"# airbundle benchmark: size {doc['size']}, {doc['reps']} rep(s)\n",
        f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_mib']} MiB RAM, "
        f"disk {m['disk']['device']} (`{m['disk']['df']}`); airbundle {m['airbundle']} at "
        f"{code['commit']}{dirty} (code snapshot {code['tree_sha256']}); "
        f"{doc['started']} → {doc['finished']}; load average before/after "
        f"{doc['loadavg_before_after'][0][0]:.2f}/{doc['loadavg_before_after'][1][0]:.2f}.\n",
        "Medians of the wall times. ratio = airbundle / peer (lower is better); verify also "
        "shows the throughput ratio (higher is better); fraction of physical limit = the "
        "machine's floor for the step / airbundle's time (1.0 = as fast as the hardware).\n",
        table(doc["rows"]),
        "\nEvery sample (the machine is shared: the load average is 2 cores' queue):\n",
        spread(doc["rows"]),
        f"\nairbundle start-up alone (`airbundle --version`, part of every airbundle time "
        f"above): {doc['airbundle_startup'].get('median_s', 0):.2f} s, "
        f"{doc['airbundle_startup'].get('peak_rss_mib', 0):.1f} MiB.\n",
        "\n## airbundle per GiB of content (scale: a large set against a small one)\n",
        "| step | dataset | GiB of content | s per GiB (median) | peak RSS MiB |\n"
        "|---|---|---:|---:|---:|",
        *[
            f"| {r['step']} | {r['dataset']} | "
            f"{r['stream_bytes']['ab'] / (1 << 30):.2f} | {r['airbundle_s_per_gib']:.3f} | "
            f"{_f(r['airbundle']['peak_rss_mib'], 1)} |"
            for r in doc["rows"]
            if r.get("airbundle_s_per_gib") is not None
        ],
        "\n## Bundle size\n",
        "| dataset | airbundle bytes | peer bytes | ratio |\n|---|---:|---:|---:|",
    ]
    out += [
        f"| {s['dataset']} | {s['airbundle_bytes']} | {s['peer_bytes']} | {s['ratio']:.4f} |"
        for s in doc["bundle_sizes"]
    ]
    out += [
        "\n## Peer phases (median s)\n",
        "| step | dataset | phases |\n|---|---|---|",
    ]
    out += [
        f"| {r['step']} | {r['dataset']} | "
        + _cell(", ".join(f"{k} {v:.3f}" for k, v in r["peer"]["phases_median_s"].items()))
        + " |"
        for r in doc["rows"]
    ]
    out += [
        "\n## Physical limits (MiB/s of uncompressed data)\n",
        "| probe | MiB/s |\n|---|---:|",
    ]
    out += [
        f"| {k} | {v / MiB:.0f} |"
        for k, v in lim.items()
        if k not in ("zstd3_ratio_on_layers", "probe_bytes", "dd_bytes")
    ]
    out.append(
        f"\nzstd -3 ratio on the gzip layers: {lim['zstd3_ratio_on_layers']:.4f}; probes over "
        f"{lim['probe_bytes'] / MiB:.1f} MiB of layer data, "
        f"dd over {lim['dd_bytes'] / MiB:.0f} MiB "
        "(cached read = page cache, direct = O_DIRECT).\n"
    )
    if doc["errors"]:
        out += ["\n## Failures\n"]
        out += [
            f"- {e['step']} {e['dataset']} {e['side']} rep {e['rep']}: "
            f"`{e['error'].strip().splitlines()[0][:300]}`"
            for e in doc["errors"]
        ]
    out += ["\n## Targets\n", "| target | holds | measured |\n|---|---|---|"]
    out += [
        f"| {_cell(t['target'])} | {'yes' if t['holds'] else '**no**'} | "
        + ", ".join(f"{k} {v}" for k, v in t["measured"].items())
        + " |"
        for t in doc["targets"]
    ]
    return "\n".join(out) + "\n"
