"""``RUN/versions.json``: the chain of versions a robot ran, and the decisions about candidates."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic


class VersionChain:
    """``RUN/versions.json``: every version the robot ran, in order, each with its parent; and, for a
    robot run, every decision about a candidate (``decisions``: screen refusals, canary promotions and
    rollbacks, rollbacks by the live watch, wmpo_core.robot_loop).

    A version the live watch rolled back is followed by a second entry of its parent's version
    (``reverted_from`` names the one rolled back): the chain's head is always what the robot runs.
    Changes are serialised by a lock (the loop's live watch writes from its own thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        data = read_json(path) if path.is_file() else {}
        self.entries: list[dict[str, Any]] = data.get("versions", [])
        self.decisions: list[dict[str, Any]] = data.get("decisions", [])

    @property
    def current(self) -> dict[str, Any]:
        """The newest version (the one the robot runs)."""
        if not self.entries:
            raise StageError(f"{self.path}: empty version chain")
        return self.entries[-1]

    def append(self, entry: dict[str, Any]) -> None:
        """Add a version whose parent must be the current one; saved at once."""
        with self._lock:
            if self.entries and entry.get("parent") != self.current["version"]:
                raise StageError(f"{self.path}: version {entry.get('version')} has parent {entry.get('parent')}, "
                                 f"expected the current version {self.current['version']}")
            if any(e["version"] == entry["version"] for e in self.entries):
                return  # the same push replayed after an interruption
            self.entries.append(entry)
            self.save()

    def record_decision(self, decision: dict[str, Any]) -> None:
        """Append a decision about a candidate; saved at once."""
        with self._lock:
            self.decisions.append(decision)
            self.save()

    def revert(self, rolled_back: str, decision: dict[str, Any]) -> dict[str, Any]:
        """The head ``rolled_back`` was rolled back to its parent: record ``decision`` and make the parent's
        entry the head again (a copy with ``reverted_from``); both saved at once. Returns the new head."""
        with self._lock:
            head = self.current
            if head["version"] != rolled_back:
                raise StageError(f"{self.path}: cannot roll back {rolled_back}: the head is {head['version']}")
            parent = next((e for e in self.entries if e["version"] == head.get("parent")), None)
            if parent is None:
                raise StageError(f"{self.path}: {rolled_back} has no parent in the chain to roll back to")
            entry = {k: v for k, v in parent.items() if k not in ("reverted_from", "promoted_ns", "canary")}
            entry.update({"reverted_from": rolled_back, "reverted_at": decision.get("at")})
            self.decisions.append(decision)
            self.entries.append(entry)
            self.save()
            return entry

    def save(self) -> None:
        """Write the chain atomically."""
        with self._lock:
            data: dict[str, Any] = {"versions": self.entries}
            if self.decisions:
                data["decisions"] = self.decisions
            write_json_atomic(self.path, data)
