"""The simulator guard: in robot mode no step may use the simulator.

`wmpo loop --robot ros` calls :func:`forbid_simulator`; it sets ``WMPO_NO_SIMULATOR`` in this
process (and so in every command it starts). Every step that would use the simulator (recording
in it, the simulated robot's graph, `wmpo eval`) calls :func:`check_simulator` first, which then
raises :class:`SimulatorForbidden` before anything starts.
"""

from __future__ import annotations

import os

from wmpo_core.io_utils import StageError

SIMULATOR_ENV = "WMPO_NO_SIMULATOR"


class SimulatorForbidden(StageError):
    """Something asked for the simulator in a mode where only the robot's own episodes may decide."""


def forbid_simulator(reason: str) -> None:
    """From now on :func:`check_simulator` raises in this process and in the commands it starts."""
    os.environ[SIMULATOR_ENV] = reason or "robot mode"


def allow_simulator() -> None:
    """Lift :func:`forbid_simulator` (tests)."""
    os.environ.pop(SIMULATOR_ENV, None)


def check_simulator(what: str) -> None:
    """Raise SimulatorForbidden naming ``what`` when the simulator is forbidden here."""
    reason = os.environ.get(SIMULATOR_ENV)
    if reason:
        raise SimulatorForbidden(f"{what}: the simulator is not used in {reason} (set by --robot ros): every decision "
                                 "comes from the robot's recorded episodes and the world / reward models")
