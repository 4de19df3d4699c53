"""Looking up a node's backend by name: one registry shape for the arm, camera and policy nodes.

Each node keeps a table name -> "module:Class"; a backend's module is imported only when
selected, so a robot without MoveIt, a RealSense or torch never imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


def backend_class(kind: str, backends: Mapping[str, str], name: str) -> type:
    """The class registered as `name` in `backends` (ValueError naming the choices if unknown or not installed)."""
    if name not in backends:
        raise ValueError(
            f"parameter 'backend': unknown {kind} backend {name!r}; expected one of {sorted(backends)}"
        )
    module_name, cls_name = backends[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"parameter 'backend': {kind} backend {name!r} is not available here ({exc})"
        ) from exc
    return getattr(module, cls_name)
