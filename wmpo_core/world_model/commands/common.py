"""What the world-model verbs share: the error line and the training config they read."""

from __future__ import annotations

import sys


def error(message: str) -> int:
    """Print ``wmpo: message`` on stderr; the exit status of a refused command line (2)."""
    print(f"wmpo: {message}", file=sys.stderr)
    return 2


def load_config(path: str | None):
    """The WorldModelTrainConfig of a JSON file, or the defaults without one."""
    from wmpo_core.world_model.train import WorldModelTrainConfig

    return WorldModelTrainConfig.from_json(path) if path else WorldModelTrainConfig()
