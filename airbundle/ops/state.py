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

from airbundle.adapters.fsutil import file_lock, read_optional, write_atomic
from airbundle.errors import StateError, TargetError
from airbundle.format import schemas
from airbundle.format.freshness import Accepted
from airbundle.format.jsonutil import loads_strict
from airbundle.limits import DEFAULT_LIMITS, Limits

STATE_VERSION = 1
MAX_HISTORY = DEFAULT_LIMITS.max_state_history
STATE_DEPTH = 8


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
    def __init__(self, folder: Path, target: str, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.folder = folder
        self.target = target
        self.limits = limits
        key = hashlib.sha256(target.encode()).hexdigest()[:16]
        self.path = folder / f"target-{key}.json"
        self._lock_path = folder / f"target-{key}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[TargetState]:
        """Hold the target's lock; yield its current state (read under the lock)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    file_lock(self._lock_path, what="state lock", error=TargetError)
                )
            except OSError as exc:
                raise TargetError(f"cannot use state folder {self.folder}: {exc}") from None
            yield self._read()

    def _read(self) -> TargetState:
        data = read_optional(
            self.path, limit=self.limits.max_state_bytes, what="import state", error=StateError
        )
        if data is None:
            return TargetState(self.target)
        what = f"import state {self.path}"
        doc = loads_strict(
            data,
            what=what,
            max_bytes=self.limits.max_state_bytes,
            max_depth=STATE_DEPTH,
            error=StateError,
        )
        # Validated whole before use: a damaged state is refused, never read
        # as an empty one (that would forget rollback protection).
        schemas.check(schemas.IMPORT_STATE, doc, what=what, error=StateError)
        if doc["target"] != self.target:
            raise StateError(f"{what} is for {doc['target']!r}, not for {self.target!r}")
        accepted = {k: Accepted.from_json(v) for k, v in doc["channels"].items()}
        return TargetState(self.target, accepted, list(doc["history"]))

    def save(self, state: TargetState) -> None:
        try:
            write_atomic(self.path, state.to_bytes())
        except OSError as exc:
            raise TargetError(f"cannot write import state {self.path}: {exc}") from None
