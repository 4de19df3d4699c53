"""Simulated robot core (ROS-free): robosuite/MuJoCo tasks, scripted demonstrators, direct rollouts.

```python
from wmpo_core.sim import make_env, make_demonstrator, run_episode
env = make_env("lift", image_size=64, cameras=("agentview", "wrist"))
obs = env.reset(seed=123)
demo = make_demonstrator("lift")
result = run_episode(env, lambda o: demo.plan_chunk(o, 8), seed=123)
```

Importing this package sets ``MUJOCO_GL=egl`` unless the caller chose a backend already,
because mujoco reads it once at import. robosuite itself is imported lazily (it takes
seconds), so ``wmpo_core.sim.demonstrators`` and ``wmpo_core.sim.rollout`` stay light.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
# PyOpenGL picks its platform separately; keep it on the same backend as mujoco.
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

__all__ = [
    "TASKS",
    "CAMERAS",
    "EpisodeResult",
    "Observation",
    "SimEnv",
    "make_demonstrator",
    "make_env",
    "run_episode",
]

# name -> module that defines it; resolved on first access (PEP 562) to keep imports cheap.
_LAZY = {
    "TASKS": "wmpo_core.sim.tasks",
    "CAMERAS": "wmpo_core.sim.tasks",
    "Observation": "wmpo_core.sim.observation",
    "SimEnv": "wmpo_core.sim.env",
    "make_env": "wmpo_core.sim.env",
    "make_demonstrator": "wmpo_core.sim.demonstrators",
    "EpisodeResult": "wmpo_core.sim.rollout",
    "run_episode": "wmpo_core.sim.rollout",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wmpo_core.sim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
