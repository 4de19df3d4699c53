"""Task table of the simulated robot: robosuite environment, instruction, horizon, privileged state.

Kept free of robosuite imports so that callers can list tasks and cameras cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Project camera name -> robosuite camera name.
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}


@dataclass(frozen=True)
class TaskSpec:
    """One simulated task.

    ``bodies`` maps a state prefix to a MuJoCo body whose position and orientation go
    into ``Observation.state`` as ``<prefix>_pos`` / ``<prefix>_quat`` (xyzw); ``sites``
    maps a state key to a MuJoCo site whose position goes in as ``<key>``.
    """

    name: str
    env_name: str
    instruction: str
    max_steps: int
    bodies: dict[str, str] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="lift",
            env_name="Lift",
            instruction="lift the red cube",
            max_steps=120,
            bodies={"cube": "cube_main"},
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
