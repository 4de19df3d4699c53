"""What the reward-model verbs share: the error line and how an AUC is printed."""

from __future__ import annotations

import sys


def error(message: str) -> int:
    """Print ``wmpo: message`` on stderr; the exit status of a refused command line (2)."""
    print(f"wmpo: {message}", file=sys.stderr)
    return 2


def auc(value: float | None) -> str:
    """An AUC with three decimals, or why there is none."""
    return "n/a (one outcome)" if value is None else f"{value:.3f}"
