"""Episode bag layout, errors and metadata: the names every other bag module shares.

An episode is one rosbag2 directory (MCAP storage); its metadata travels on ``/wmpo/episode``
and in metadata.yaml ``custom_data["wmpo.episode"]``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MCAP_MAGIC = b"\x89MCAP0\r\n"
METADATA_FILE = "metadata.yaml"
CUSTOM_DATA_KEY = "wmpo.episode"
# Suffix of an original .mcap (and metadata.yaml) while a repair runs; its presence means "repair again".
REPAIR_SUFFIX = ".orig"
_EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class EpisodeError(Exception):
    """A bag that cannot be written, read or repaired; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class EpisodeWriteError(EpisodeError):
    """Writing stopped (disk full, file too large, I/O error); says what was kept on disk."""

    def __init__(self, path: Path, message: str, errno: int | None, kept_messages: int) -> None:
        super().__init__(path, message)
        self.errno = errno
        self.kept_messages = kept_messages


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_episode_id(task: str) -> str:
    """A sortable, unique episode id: ``<UTC time>_<task>_<random hex>``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", task).strip("-") or "episode"
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}_{slug}_{secrets.token_hex(3)}"


@dataclass
class EpisodeMetadata:
    """Episode metadata carried in ``/wmpo/episode`` and metadata.yaml ``custom_data['wmpo.episode']``."""

    episode_id: str
    task: str
    instruction: str
    robot_id: str = "sim"
    policy_version: str = ""
    success: bool | None = None
    complete: bool = False
    seed: int | None = None
    started_at: str = field(default_factory=utc_now_iso)
    control_hz: float = 20.0
    # Keys written by a newer version are kept so a rewrite loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.episode_id, str) or not _EPISODE_ID_RE.match(self.episode_id):
            raise ValueError(
                f"episode_id {self.episode_id!r}: expected 1-128 letters, digits, '.', '_' or '-' "
                "(it names the bag directory)"
            )

    @classmethod
    def new(cls, task: str, instruction: str, **kwargs: Any) -> EpisodeMetadata:
        """Metadata for a new episode with a fresh id; kwargs set the other fields."""
        return cls(episode_id=kwargs.pop("episode_id", None) or new_episode_id(task), task=task,
                   instruction=instruction, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the JSON object), extra keys merged in."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    def to_json(self) -> str:
        """Compact JSON with sorted keys."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "episode metadata") -> EpisodeMetadata:
        """Validate a decoded JSON object; errors name ``source`` and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        checks: dict[str, tuple[type, ...]] = {
            "episode_id": (str,), "task": (str,), "instruction": (str,), "robot_id": (str,),
            "policy_version": (str,), "success": (bool, type(None)), "complete": (bool,),
            "seed": (int, type(None)), "started_at": (str,), "control_hz": (int, float),
        }
        kwargs: dict[str, Any] = {}
        for name, types in checks.items():
            if name not in data:
                if name in ("episode_id", "task", "instruction"):
                    raise ValueError(f"{source}: missing field {name!r}")
                continue
            value = data[name]
            bad_bool = isinstance(value, bool) and bool not in types
            if not isinstance(value, types) or bad_bool:
                want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ValueError(f"{source}: field {name!r} must be {want}, got {value!r}")
            kwargs[name] = value
        known = {f.name for f in fields(cls)}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "episode metadata") -> EpisodeMetadata:
        """Parse and validate JSON metadata."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
