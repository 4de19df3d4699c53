"""`wmpo ablate-world-model`: the world-model ablations (wmpo_core.world_model.ablation)."""

from __future__ import annotations

from wmpo_core.world_model.ablation import configure, main

__all__ = ["HELP", "configure", "main"]

HELP = "world-model ablations: no noisy-frame conditioning, no behavior alignment"
