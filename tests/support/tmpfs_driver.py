"""Run inside the namespace by :func:`support.tmpfs.on_small_tmpfs` (not imported):
``python tmpfs_driver.py ROOT STEPS_JSON``.

Each step may make a folder (``"mkdir": dest``), place a file
(``"place": [src, dest]``) and run a command
(``"argv": [...]``); the result of each carries the command's exit status and
output, and every entry under ROOT (``"dir"`` or the file's sha256). The results,
a JSON list, are the last line printed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_step(root: Path, step: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "mkdir" in step:
        Path(step["mkdir"]).mkdir(parents=True, exist_ok=True)
    if "place" in step:
        src, dest = step["place"]
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    if "argv" in step:
        proc = subprocess.run(step["argv"], capture_output=True, text=True, timeout=120)
        out.update(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
    out["entries"] = {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[1])
    print(json.dumps([run_step(root, step) for step in json.loads(argv[2])]))


if __name__ == "__main__":
    main(sys.argv)
