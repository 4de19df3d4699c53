"""``RUN/versions.json``: the chain of versions a robot ran, and the decisions about candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic


class VersionChain:
    """``RUN/versions.json``: every version the robot ran, in order, each with its parent; and, for a
    robot run, every decision about a candidate (``decisions``: screen refusals, canary promotions and
    rollbacks, wmpo_core.robot_loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        if self.entries and entry.get("parent") != self.current["version"]:
            raise StageError(f"{self.path}: version {entry.get('version')} has parent {entry.get('parent')}, "
                             f"expected the current version {self.current['version']}")
        if any(e["version"] == entry["version"] for e in self.entries):
            return  # the same push replayed after an interruption
        self.entries.append(entry)
        self.save()

    def record_decision(self, decision: dict[str, Any]) -> None:
        """Append a decision about a candidate; saved at once."""
        self.decisions.append(decision)
        self.save()

    def save(self) -> None:
        """Write the chain atomically."""
        data: dict[str, Any] = {"versions": self.entries}
        if self.decisions:
            data["decisions"] = self.decisions
        write_json_atomic(self.path, data)
