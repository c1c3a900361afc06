"""The import side's memory: per target, what was accepted last, and a history.

One JSON file per target under the state folder, locked for the whole import
(two imports into one target are serialised, so no sequence update is lost),
and written atomically (temporary file, fsync, rename) only after an import
succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airbundle.adapters.fsutil import file_lock, write_atomic
from airbundle.errors import TargetError
from airbundle.format.freshness import Accepted
from airbundle.limits import DEFAULT_LIMITS

STATE_VERSION = 1
MAX_HISTORY = DEFAULT_LIMITS.max_state_history


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airbundle"


@dataclass
class TargetState:
    target: str
    accepted: dict[str, Accepted] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "target": self.target,
            "channels": {k: v.to_json() for k, v in sorted(self.accepted.items())},
            "history": self.history[-MAX_HISTORY:],
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


class StateStore:
    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        self.target = target
        key = hashlib.sha256(target.encode()).hexdigest()[:16]
        self.path = folder / f"target-{key}.json"
        self._lock_path = folder / f"target-{key}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[TargetState]:
        """Hold the target's lock; yield its current state (read under the lock)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self._lock_path))
            except OSError as exc:
                raise TargetError(f"cannot use state folder {self.folder}: {exc}") from None
            yield self._read()

    def _read(self) -> TargetState:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return TargetState(self.target)
        except (OSError, ValueError) as exc:
            raise TargetError(
                f"import state {self.path} is unreadable: {exc}",
                hint="restore it from backup; deleting it forgets rollback protection",
            ) from None
        if doc.get("version") != STATE_VERSION or doc.get("target") != self.target:
            raise TargetError(f"import state {self.path} is not for {self.target}")
        accepted = {k: Accepted.from_json(v) for k, v in (doc.get("channels") or {}).items()}
        return TargetState(self.target, accepted, list(doc.get("history") or []))

    def save(self, state: TargetState) -> None:
        try:
            write_atomic(self.path, state.to_bytes())
        except OSError as exc:
            raise TargetError(f"cannot write import state {self.path}: {exc}") from None
