"""What the simulated robot reports after every reset and step (no robosuite import)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One observation of the simulated robot.

    Positions are in the world frame of the scene, whose axes coincide with the robot
    base frame in every task (checked when the environment is built), so a difference
    of two positions is directly an action's ``ee_dx/dy/dz``.
    """

    images: dict[str, np.ndarray]
    """Camera name -> HxWx3 uint8, upright (row 0 is the top of the picture)."""
    joint_names: list[str]
    """Arm joints (7) then gripper finger joints (2), Franka naming."""
    joint_positions: np.ndarray
    """Radians for the arm, metres for the fingers, in ``joint_names`` order."""
    eef_pos: np.ndarray
    """Grip site (between the fingertips), metres."""
    eef_quat: np.ndarray
    """Hand orientation, quaternion xyzw (robosuite's ``robot0_eef_quat``)."""
    gripper_qpos: np.ndarray
    """The two finger joint positions, metres (about +-0.021 open, 0 closed)."""
    state: dict[str, np.ndarray]
    """Privileged object state for scripted policies: ``<object>_pos``, ``<object>_quat`` (xyzw), sites."""
    success: bool
    """The simulator's own success check."""
    step: int
    """Control steps since the last reset."""
    applied_action: np.ndarray | None = None
    """The physical action executed to reach this observation after clipping (None after a reset)."""
    action_clipped: bool = False
    """True when the requested action exceeded the controller's range and was clipped."""
    info: dict = field(default_factory=dict)
