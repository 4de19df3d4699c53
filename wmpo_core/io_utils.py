"""Small file helpers: the JSON files of the run stages (`wmpo demo`, `wmpo loop`, `wmpo compare`) and
fsync by path (the bag writer, the package push).

Imports nothing from ``wmpo_core``: anything may use it without reaching up a layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StageError(RuntimeError):
    """A stage could not finish; the message names the command or file."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Read a JSON file; a StageError naming the file when it is unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: cannot read JSON: {exc}") from exc


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
