"""Task table of the simulated robot: robosuite environment, instruction, horizon, privileged state.

Kept free of robosuite imports so that callers can list tasks and cameras cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Project camera name -> robosuite camera name. ``workspace`` is the agentview camera with its field of
# view narrowed by the task's ``workspace_zoom``: the same pinhole camera, so its image equals the centre
# 1/zoom of an agentview image rendered zoom times larger, at no extra render cost.
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand", "workspace": "agentview"}


@dataclass(frozen=True)
class TaskSpec:
    """One simulated task.

    ``bodies`` maps a state prefix to a MuJoCo body whose position and orientation go
    into ``Observation.state`` as ``<prefix>_pos`` / ``<prefix>_quat`` (xyzw); ``sites``
    maps a state key to a MuJoCo site whose position goes in as ``<key>``.

    ``workspace_zoom`` is how much closer the ``workspace`` camera looks than ``agentview``
    (the tangent of its half field of view divided by this). It is chosen so that the task's
    decisive motion spans several pixels at the models' 64 px while every start state's objects
    and the arm's working volume stay in view (measured per task; see ``docs/observation.md``).
    """

    name: str
    env_name: str
    instruction: str
    max_steps: int
    bodies: dict[str, str] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)
    workspace_zoom: float = 2.0
    # Camera -> normalized (x0, y0, x1, y1) box holding the task's objects over start states and their
    # decisive motion: where `wmpo diagnose-imagination` measures task-region fidelity.
    regions: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="lift",
            env_name="Lift",
            instruction="lift the red cube",
            max_steps=120,
            bodies={"cube": "cube_main"},
            workspace_zoom=2.5,
            # Measured over reset seeds 0-19 at 64 px: cube centres and the same cubes lifted 4 cm, plus its size.
            regions={"agentview": (0.39, 0.36, 0.61, 0.6), "workspace": (0.28, 0.2, 0.72, 0.72)},
        ),
        TaskSpec(
            name="square",
            env_name="NutAssemblySquare",
            instruction="put the square nut on the square peg",
            max_steps=400,
            bodies={"nut": "SquareNut_main", "peg": "peg1"},
            sites={"nut_handle_pos": "SquareNut_handle_site", "nut_center_pos": "SquareNut_center_site"},
        ),
        TaskSpec(
            name="stack",
            env_name="Stack",
            instruction="stack the red cube on the green cube",
            max_steps=200,
            bodies={"cube_a": "cubeA_main", "cube_b": "cubeB_main"},
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; a ValueError lists the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task: unknown task {name!r}; expected one of {sorted(TASKS)}") from None
