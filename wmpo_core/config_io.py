"""Reading flat config dataclasses from JSON with errors that name the file and field."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_json(cls: type[T], path: str | Path, what: str) -> T:
    """``cls(**json)`` from ``path``; unreadable files and unknown fields raise ValueError naming them."""
    path = Path(path)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    return cls(**data)
