"""Scripted demonstrators: waypoint policies over the simulator's privileged state.

Each task is a short list of phases (approach, descend, grasp, lift, ...). A phase gives a
target grip-site position, a hand yaw and a gripper command, plus the test that ends it.
``plan_chunk(obs, k)`` plans ``k`` steps open-loop from one observation by rolling a
kinematic prediction forward (the hand covers about a quarter of each commanded delta per
step under robosuite's OSC, a held object follows the hand), so a chunk can be executed
like a learned policy's chunk. Timed and free-space phases may end inside a chunk on the
prediction; a phase that ends next to an object ends only on a real observation. Gains and
the prediction are tuned for the default 20 Hz control.

``noise`` in [0, 1] degrades the demonstrations: Gaussian action noise, per-episode
waypoint errors (grasp point, placement, heading; scaled to each task's tolerance), an
occasional early release, and no retry after a failed grasp, so that noise around
0.3-0.5 yields a mix of successes and failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from wmpo_core.control import ACTION_DIM, GRIPPER_CLOSED, GRIPPER_OPEN
from wmpo_core.sim.observation import Observation
from wmpo_core.sim.tasks import get_task

# Fraction of a commanded delta the OSC hand covers in one step (measured, steady state).
POS_TRACKING = 0.25
ROT_TRACKING = 0.2
POS_GAIN = 3.0  # commanded delta per metre of error
ROT_GAIN = 2.0
MAX_POS_STEP = 0.05  # metres per step, the controller's output limit
MAX_ROT_STEP = 0.5
GRASP_STEPS = 10  # steps to close the fingers before lifting
RELEASE_STEPS = 8
FINGER_EMPTY = 0.0025  # finger opening (m) below which a closed gripper holds nothing
HAND_DOWN = Rotation.from_euler("x", np.pi)  # hand pointing down, fingers closing along world y


def _wrap(angle: float, period: float) -> float:
    """Angle folded into (-period/2, period/2]."""
    return float(-((-angle + period / 2) % period - period / 2))


def _yaw(quat_xyzw: np.ndarray) -> float:
    """Heading of an object about the vertical, from whichever of its x / y axes lies flattest.

    Robust to a tipped-over cube, where Euler angles hit gimbal lock. The y axis reading is
    turned back by a quarter turn, so for an object lying flat both readings agree.
    """
    axes = Rotation.from_quat(quat_xyzw).as_matrix()
    if abs(axes[2, 0]) <= abs(axes[2, 1]):
        return float(np.arctan2(axes[1, 0], axes[0, 0]))
    return float(np.arctan2(axes[1, 1], axes[0, 1]) - np.pi / 2)


def _hand_yaw(rot: Rotation) -> float:
    x_axis = rot.as_matrix()[:, 0]
    return float(np.arctan2(x_axis[1], x_axis[0]))


def _closest_yaw(target: float, current: float, period: float) -> float:
    """The yaw equivalent to ``target`` modulo ``period`` that is closest to ``current``."""
    return current + _wrap(target - current, period)


@dataclass
class _Plan:
    """Predicted state while planning a chunk: hand pose, object positions, phase."""

    eef: np.ndarray
    hand: Rotation
    objects: dict[str, np.ndarray]
    yaws: dict[str, float]
    gripper_open: float
    phase: int
    phase_start: int
    step: int
    held: str | None = None
    memo: dict = field(default_factory=dict)


class ScriptedDemonstrator:
    """Waypoint demonstrator for one task; see :func:`make_demonstrator`."""

    task = ""
    phases: tuple[str, ...] = ()
    grasp_phase = "grasp"
    release_phase = "release"
    # Phases a chunk may leave on prediction alone (timers, free-space moves); leaving any other
    # phase waits for a real observation, because a mispredicted "arrived" would drive the hand
    # into the object from the wrong place.
    blind_exits: frozenset[str] = frozenset({"grasp", "release", "lift"})
    release_window = (5, 60)  # steps after the grasp in which a noisy early release may happen
    # Standard deviations at noise 1, scaled to each task's tolerance: grasp point (x, y, z in
    # metres), placement (metres), heading (radians), per-step action noise (fraction of the
    # default 4 cm / 0.2 rad).
    grasp_error: tuple[float, float, float] = (0.04, 0.04, 0.012)
    place_error = 0.024
    yaw_error = 0.5
    action_noise = 1.0

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= float(noise) <= 1.0:
            raise ValueError(f"noise: expected a value in [0, 1], got {noise!r}")
        self.noise = float(noise)
        self.seed = int(seed)
        self._episodes = 0
        self.reset()

    # ----------------------------------------------------------------- episode state
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: phase back to the first, fresh per-episode errors.

        ``seed`` fixes the noise of this episode; without it, successive episodes draw
        successive streams from the constructor's seed.
        """
        episode_key = self._episodes if seed is None else int(seed) + 1_000_003
        self._episodes += 1
        self.rng = np.random.default_rng([self.seed, episode_key])
        self.phase = 0
        self.phase_start = 0
        self.regrasps = 0
        self.released_early = False
        n = self.noise
        # Per-episode waypoint errors: where the hand grasps and where it puts the object down.
        self.grasp_offset = self.rng.normal(0.0, 1.0, 3) * np.asarray(self.grasp_error) * n
        self.place_offset = self.rng.normal(0.0, 1.0, 3) * np.r_[self.place_error, self.place_error, 0.0] * n
        self.yaw_offset = float(self.rng.normal(0.0, self.yaw_error * n))
        # An occasional early release, at a random step after the grasp.
        low, high = self.release_window
        self.early_release_step = int(self.rng.integers(low, high)) if self.rng.random() < 0.7 * n else None
        # A clean demonstrator retries a failed grasp; a sloppy one carries on empty-handed.
        self.max_regrasps = 2 if n < 0.25 else 0
        self.grasp_done_at: int | None = None
        self.grasp_yaw: float | None = None
        self._last_step = -1

    def act(self, obs: Observation) -> np.ndarray:
        """One action (7,) for ``obs`` (a chunk of one)."""
        return self.plan_chunk(obs, 1)[0]

    def plan_chunk(self, obs: Observation, k: int = 8) -> np.ndarray:
        """``k`` future actions (k, 7) planned from ``obs``, to be executed open-loop."""
        if k < 1:
            raise ValueError(f"k: expected a positive chunk length, got {k}")
        if obs.step == 0 and self._last_step != 0 and self._last_step != -1:
            self.reset()  # a new episode started without reset(): begin from the first phase
        self._last_step = obs.step
        self._advance_on_observation(obs)
        plan = self._plan_from(obs)
        chunk = np.zeros((k, ACTION_DIM))
        for i in range(k):
            self._advance(plan, predicted=True)
            chunk[i] = self._action(plan)
            self._predict(plan, chunk[i])
        return chunk

    # ----------------------------------------------------------------- task hooks
    def _objects(self, obs: Observation) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _yaws(self, obs: Observation) -> dict[str, float]:
        raise NotImplementedError

    def _target(self, plan: _Plan) -> tuple[np.ndarray, float, float]:
        """(grip-site target position, hand yaw target, gripper command) of the current phase."""
        raise NotImplementedError

    def _phase_done(self, plan: _Plan) -> bool:
        raise NotImplementedError

    def _held_name(self) -> str:
        raise NotImplementedError

    def _grasp_yaw(self, plan: _Plan) -> float:
        """Hand yaw for grasping the object."""
        raise NotImplementedError

    def _approach_height(self, plan: _Plan, target: np.ndarray, hover: float) -> np.ndarray:
        """Hover point over ``target``, raised while the hand is still far off sideways.

        The hand then comes down in a funnel instead of sweeping low across the table into
        the objects.
        """
        sideways = float(np.linalg.norm(plan.eef[:2] - target[:2]))
        return target + [0.0, 0.0, hover + float(np.clip(sideways - 0.01, 0.0, 0.08))]

    # ----------------------------------------------------------------- machinery
    @property
    def phase_name(self) -> str:
        """Name of the current phase."""
        return self.phases[self.phase]

    def _plan_from(self, obs: Observation) -> _Plan:
        grasped = self.phases.index(self.grasp_phase) < self.phase < self.phases.index(self.release_phase)
        return _Plan(
            eef=np.array(obs.eef_pos, dtype=float),
            hand=Rotation.from_quat(obs.eef_quat),
            objects=self._objects(obs),
            yaws=self._yaws(obs),
            gripper_open=float(np.mean(np.abs(obs.gripper_qpos))),
            phase=self.phase,
            phase_start=self.phase_start,
            step=obs.step,
            held=self._held_name() if grasped else None,
            memo={} if self.grasp_yaw is None else {"yaw": self.grasp_yaw},
        )

    def _advance_on_observation(self, obs: Observation) -> None:
        """Advance (or fall back) the committed phase from what the real observation shows."""
        plan = self._plan_from(obs)
        if self.grasp_yaw is None:
            # Decided once per grasp attempt: re-deciding every chunk lets the wrist chase a
            # target that moves with it.
            self.grasp_yaw = plan.memo["yaw"] = self._grasp_yaw(plan)
        names = self.phases
        grasp, release = names.index(self.grasp_phase), names.index(self.release_phase)
        # Lost the object while carrying it: go back and grasp again (unless noise let it go).
        if grasp < plan.phase < release and not self.released_early and self._lost_object(plan):
            if self.regrasps < self.max_regrasps:
                self.regrasps += 1
                self.phase, self.phase_start = 0, obs.step
                self.grasp_done_at = None
                self.grasp_yaw = None
                self._on_regrasp()
                return
        self._advance(plan, predicted=False)
        self.phase, self.phase_start = plan.phase, plan.phase_start

    def _on_regrasp(self) -> None:
        """Forget decisions tied to the previous grasp."""

    def _lost_object(self, plan: _Plan) -> bool:
        held = self._held_name()
        empty = plan.gripper_open < FINGER_EMPTY
        far = np.linalg.norm(plan.objects[held] - plan.eef) > 0.04
        return bool(empty or far)

    def _advance(self, plan: _Plan, *, predicted: bool) -> None:
        for _ in range(len(self.phases)):
            if plan.phase >= len(self.phases) - 1 or not self._phase_done(plan):
                return
            if predicted and self.phases[plan.phase] not in self.blind_exits:
                return
            plan.phase += 1
            plan.phase_start = plan.step
            names = self.phases
            if plan.phase == names.index(self.grasp_phase) + 1:
                plan.held = self._held_name()
                plan.memo["grasp_done"] = plan.step
                if not predicted:
                    self.grasp_done_at = plan.step
            if plan.phase == names.index(self.release_phase):
                plan.held = None

    def _action(self, plan: _Plan) -> np.ndarray:
        target, yaw, gripper = self._target(plan)
        grasp, release = self.phases.index(self.grasp_phase), self.phases.index(self.release_phase)
        if grasp < plan.phase < release:
            grasped_at = plan.memo.get("grasp_done", self.grasp_done_at)
            late = grasped_at is not None and plan.step >= grasped_at + (self.early_release_step or 0)
            if self.released_early or (self.early_release_step is not None and late):
                gripper = GRIPPER_OPEN
                self.released_early = True
        action = np.zeros(ACTION_DIM)
        err = target - plan.eef
        action[:3] = np.clip(POS_GAIN * err, -MAX_POS_STEP, MAX_POS_STEP)
        goal = Rotation.from_euler("z", yaw) * HAND_DOWN
        rot_err = (goal * plan.hand.inv()).as_rotvec()
        action[3:6] = np.clip(ROT_GAIN * rot_err, -MAX_ROT_STEP, MAX_ROT_STEP)
        action[6] = gripper
        if self.noise > 0:
            scale = self.noise * self.action_noise
            action[:3] += self.rng.normal(0.0, 0.04 * scale, 3)
            action[3:6] += self.rng.normal(0.0, 0.2 * scale, 3)
            limit = np.r_[[MAX_POS_STEP] * 3, [MAX_ROT_STEP] * 3]
            action[:6] = np.clip(action[:6], -limit, limit)
        return action

    def _predict(self, plan: _Plan, action: np.ndarray) -> None:
        """Roll the kinematic prediction one step forward."""
        move = POS_TRACKING * action[:3]
        plan.eef = plan.eef + move
        plan.hand = Rotation.from_rotvec(ROT_TRACKING * action[3:6]) * plan.hand
        if plan.held is not None:
            plan.objects[plan.held] = plan.objects[plan.held] + move
        plan.step += 1

    def _yaw_error(self, plan: _Plan, yaw: float) -> float:
        return abs(_wrap(yaw - _hand_yaw(plan.hand), 2 * np.pi))

    def _steps_in_phase(self, plan: _Plan) -> int:
        return plan.step - plan.phase_start


class LiftDemonstrator(ScriptedDemonstrator):
    """Grasp the cube from above, aligned with its faces, and lift it."""

    task = "lift"
    phases = ("approach", "descend", "grasp", "lift", "release")
    release_window = (1, 6)  # the cube counts as lifted a few steps after the grasp
    HOVER = 0.06
    LIFT_Z = 1.0  # 0.2 m above the table top

    def _objects(self, obs: Observation) -> dict[str, np.ndarray]:
        return {"cube": np.array(obs.state["cube_pos"], dtype=float)}

    def _yaws(self, obs: Observation) -> dict[str, float]:
        return {"cube": _yaw(obs.state["cube_quat"])}

    def _held_name(self) -> str:
        return "cube"

    def _grasp_yaw(self, plan: _Plan) -> float:
        return _closest_yaw(plan.yaws["cube"] + self.yaw_offset, _hand_yaw(plan.hand), np.pi / 2)

    def _target(self, plan: _Plan) -> tuple[np.ndarray, float, float]:
        cube = plan.objects["cube"] + self.grasp_offset
        name = self.phases[plan.phase]
        yaw = plan.memo.setdefault("yaw", self._grasp_yaw(plan))
        if name == "approach":
            return self._approach_height(plan, cube, self.HOVER), yaw, GRIPPER_OPEN
        if name == "descend":
            return cube, yaw, GRIPPER_OPEN
        if name == "grasp":
            return plan.eef.copy(), _hand_yaw(plan.hand), GRIPPER_CLOSED
        if name == "lift":
            return np.r_[plan.eef[:2], self.LIFT_Z], _hand_yaw(plan.hand), GRIPPER_CLOSED
        return plan.eef.copy(), _hand_yaw(plan.hand), GRIPPER_CLOSED

    def _phase_done(self, plan: _Plan) -> bool:
        name = self.phases[plan.phase]
        cube = plan.objects["cube"] + self.grasp_offset
        xy = np.linalg.norm(plan.eef[:2] - cube[:2])
        yaw_ok = self._yaw_error(plan, plan.memo.setdefault("yaw", self._grasp_yaw(plan))) < 0.08
        if name == "approach":
            return bool(xy < 0.01 and yaw_ok and plan.eef[2] < cube[2] + self.HOVER + 0.015)
        if name == "descend":
            return bool(xy < 0.01 and plan.eef[2] < cube[2] + 0.008)
        if name == "grasp":
            return self._steps_in_phase(plan) >= GRASP_STEPS
        return False  # lift holds until the episode ends


class SquareDemonstrator(ScriptedDemonstrator):
    """Grasp the square nut by its handle, carry it over the square peg, align, lower, release."""

    task = "square"
    phases = ("approach", "descend", "grasp", "lift", "carry", "insert", "release", "retreat")
    # The handle is 3 cm wide and the nut clears the peg by under 7 mm: errors must stay small.
    grasp_error = (0.012, 0.012, 0.006)
    place_error = 0.008
    yaw_error = 0.12
    action_noise = 0.5
    HOVER = 0.08
    CARRY_Z = 1.0  # hand height while carrying: the nut clears the peg top (0.95 m)
    INSERT_Z = 0.84  # nut centre target height, below the success bound (0.87 m)

    # Grasp point this far outward of the handle site, so the fingers clear the nut's ring wall.
    HANDLE_SHIFT = 0.007

    def _objects(self, obs: Observation) -> dict[str, np.ndarray]:
        handle = np.array(obs.state["nut_handle_pos"], dtype=float)
        outward = handle - np.array(obs.state["nut_center_pos"], dtype=float)
        outward[2] = 0.0
        return {
            "handle": handle + self.HANDLE_SHIFT * outward / max(np.linalg.norm(outward), 1e-9),
            "nut": np.array(obs.state["nut_center_pos"], dtype=float),
            "peg": np.array(obs.state["peg_pos"], dtype=float),
        }

    def _yaws(self, obs: Observation) -> dict[str, float]:
        return {"nut": _yaw(obs.state["nut_quat"])}

    def _held_name(self) -> str:
        return "handle"

    # Handle directions the nut may end in (the peg is square and axis-aligned, so any quarter
    # turn fits): towards the robot first, the reach is shortest; sideways otherwise.
    HANDLE_GOALS = ((np.pi, 0.0), (np.pi / 2, 0.6), (-np.pi / 2, 0.6))
    HAND_YAW_RANGE = (-2.6, 2.0)  # hand yaws the wrist joint reaches from its start pose

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.handle_goal: float | None = None

    def _on_regrasp(self) -> None:
        self.handle_goal = None

    def _predict(self, plan: _Plan, action: np.ndarray) -> None:
        eef_before, yaw_before = plan.eef.copy(), _hand_yaw(plan.hand)
        super()._predict(plan, action)
        if plan.held is not None:  # the nut turns and moves with the hand
            turn = _wrap(_hand_yaw(plan.hand) - yaw_before, 2 * np.pi)
            arm = Rotation.from_euler("z", turn).apply(plan.objects["nut"] - eef_before)
            plan.objects["nut"] = plan.eef + arm
            plan.yaws["nut"] += turn

    def _grasp_yaw(self, plan: _Plan) -> float:
        """Fingers close across the handle, i.e. along the nut's own y axis."""
        return _closest_yaw(plan.yaws["nut"], _hand_yaw(plan.hand), np.pi)

    def _carry_targets(self, plan: _Plan) -> tuple[np.ndarray, float]:
        """Hand position and yaw that put the nut centre over the peg with its sides square."""
        hand_yaw = _hand_yaw(plan.hand)
        nut_yaw = plan.yaws["nut"] + self.yaw_offset
        if self.handle_goal is None:
            feasible = [
                (abs(_wrap(goal - nut_yaw, 2 * np.pi)) + penalty, goal)
                for goal, penalty in self.HANDLE_GOALS
                if self.HAND_YAW_RANGE[0]
                < hand_yaw + _wrap(goal - nut_yaw, 2 * np.pi)
                < self.HAND_YAW_RANGE[1]
            ]
            self.handle_goal = min(feasible)[1] if feasible else float(np.pi)
        nut_turn = _wrap(self.handle_goal - nut_yaw, 2 * np.pi)
        offset = plan.objects["nut"] - plan.eef
        rotated = Rotation.from_euler("z", nut_turn).apply(offset)[:2]
        peg = plan.objects["peg"][:2] + self.place_offset[:2]
        return np.r_[peg - rotated, self.CARRY_Z], hand_yaw + nut_turn

    def _target(self, plan: _Plan) -> tuple[np.ndarray, float, float]:
        name = self.phases[plan.phase]
        handle = plan.objects["handle"] + self.grasp_offset
        yaw = plan.memo.setdefault("yaw", self._grasp_yaw(plan))
        if name == "approach":
            return self._approach_height(plan, handle, self.HOVER), yaw, GRIPPER_OPEN
        if name == "descend":
            return handle, yaw, GRIPPER_OPEN
        if name == "grasp":
            return plan.eef.copy(), _hand_yaw(plan.hand), GRIPPER_CLOSED
        if name == "lift":
            return np.r_[plan.eef[:2], self.CARRY_Z], _hand_yaw(plan.hand), GRIPPER_CLOSED
        if name == "carry":
            target, carry_yaw = self._carry_targets(plan)
            return target, carry_yaw, GRIPPER_CLOSED
        if name == "insert":
            target, carry_yaw = self._carry_targets(plan)
            drop = plan.objects["nut"][2] - self.INSERT_Z
            return np.r_[target[:2], plan.eef[2] - drop], carry_yaw, GRIPPER_CLOSED
        if name == "release":
            return plan.eef.copy(), _hand_yaw(plan.hand), GRIPPER_OPEN
        return np.r_[plan.eef[:2], self.CARRY_Z], _hand_yaw(plan.hand), GRIPPER_OPEN

    def _phase_done(self, plan: _Plan) -> bool:
        name = self.phases[plan.phase]
        handle = plan.objects["handle"] + self.grasp_offset
        xy = np.linalg.norm(plan.eef[:2] - handle[:2])
        if name == "approach":
            yaw_ok = self._yaw_error(plan, plan.memo.setdefault("yaw", self._grasp_yaw(plan))) < 0.08
            return bool(xy < 0.008 and yaw_ok and plan.eef[2] < handle[2] + self.HOVER + 0.015)
        if name == "descend":
            return bool(xy < 0.008 and plan.eef[2] < handle[2] + 0.006)
        if name == "grasp":
            return self._steps_in_phase(plan) >= GRASP_STEPS
        if name == "lift":
            return bool(plan.objects["nut"][2] > 0.98)
        if name == "carry":
            peg = plan.objects["peg"][:2] + self.place_offset[:2]
            nut_xy = np.linalg.norm(plan.objects["nut"][:2] - peg)
            square = abs(_wrap(plan.yaws["nut"] + self.yaw_offset, np.pi / 2)) < 0.05
            return bool(nut_xy < 0.004 and square)
        if name == "insert":
            return bool(plan.objects["nut"][2] < self.INSERT_Z + 0.01)
        if name == "release":
            return self._steps_in_phase(plan) >= RELEASE_STEPS
        return False


class StackDemonstrator(ScriptedDemonstrator):
    """Grasp the red cube, carry it over the green cube, set it down on top, let go."""

    task = "stack"
    phases = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")
    release_window = (5, 40)
    grasp_error = (0.03, 0.03, 0.01)
    place_error = 0.02
    yaw_error = 0.3
    HOVER = 0.06
    # Half sizes of robosuite's Stack cubes (red cubeA 0.02 m, green cubeB 0.025 m).
    TOP_HALF, BASE_HALF = 0.02, 0.025
    CLEARANCE = 0.03  # height of the red cube's bottom over the green cube's top while carrying

    def _objects(self, obs: Observation) -> dict[str, np.ndarray]:
        return {
            "cube": np.array(obs.state["cube_a_pos"], dtype=float),
            "base": np.array(obs.state["cube_b_pos"], dtype=float),
        }

    def _yaws(self, obs: Observation) -> dict[str, float]:
        return {"cube": _yaw(obs.state["cube_a_quat"])}

    def _held_name(self) -> str:
        return "cube"

    def _grasp_yaw(self, plan: _Plan) -> float:
        """Grasp heading across the red cube's faces that keeps the fingers off the green cube.

        Of the two quarter-turn options, prefer the one whose finger axis is perpendicular to the
        line between the cubes when they stand close; otherwise the smaller wrist turn.
        """
        hand = _hand_yaw(plan.hand)
        first = _closest_yaw(plan.yaws["cube"] + self.yaw_offset, hand, np.pi / 2)
        between = plan.objects["base"][:2] - plan.objects["cube"][:2]
        distance = float(np.linalg.norm(between))
        options = []
        for yaw in (first, _closest_yaw(first + np.pi / 2, hand, np.pi)):
            finger_axis = np.array([np.sin(yaw), -np.cos(yaw)])
            towards_base = abs(finger_axis @ between) / max(distance, 1e-9) if distance < 0.12 else 0.0
            options.append((towards_base + 0.1 * abs(yaw - hand), yaw))
        return min(options)[1]

    def _stack_height(self, plan: _Plan, gap: float) -> float:
        """Red cube centre height with its bottom ``gap`` above the green cube's top."""
        return plan.objects["base"][2] + self.BASE_HALF + self.TOP_HALF + gap

    def _over_base(self, plan: _Plan, cube_z: float) -> np.ndarray:
        """Hand position that puts the red cube's centre over the green cube at height ``cube_z``."""
        hold = plan.eef - plan.objects["cube"]
        base = plan.objects["base"] + self.place_offset
        return np.r_[base[:2] + hold[:2], cube_z + hold[2]]

    def _target(self, plan: _Plan) -> tuple[np.ndarray, float, float]:
        name = self.phases[plan.phase]
        cube = plan.objects["cube"] + self.grasp_offset
        yaw, keep = plan.memo.setdefault("yaw", self._grasp_yaw(plan)), _hand_yaw(plan.hand)
        if name == "approach":
            return self._approach_height(plan, cube, self.HOVER), yaw, GRIPPER_OPEN
        if name == "descend":
            return cube, yaw, GRIPPER_OPEN
        if name == "grasp":
            return plan.eef.copy(), keep, GRIPPER_CLOSED
        if name == "lift":
            hold_z = plan.eef[2] - plan.objects["cube"][2]
            return (
                np.r_[plan.eef[:2], self._stack_height(plan, self.CLEARANCE + 0.01) + hold_z],
                keep,
                GRIPPER_CLOSED,
            )
        if name == "carry":
            return self._over_base(plan, self._stack_height(plan, self.CLEARANCE)), keep, GRIPPER_CLOSED
        if name == "lower":
            return self._over_base(plan, self._stack_height(plan, 0.0)), keep, GRIPPER_CLOSED
        if name == "release":
            return plan.eef.copy(), keep, GRIPPER_OPEN
        return plan.eef + [0, 0, 0.05], keep, GRIPPER_OPEN

    def _phase_done(self, plan: _Plan) -> bool:
        name = self.phases[plan.phase]
        cube = plan.objects["cube"] + self.grasp_offset
        xy = np.linalg.norm(plan.eef[:2] - cube[:2])
        if name == "approach":
            yaw_ok = self._yaw_error(plan, plan.memo.setdefault("yaw", self._grasp_yaw(plan))) < 0.08
            return bool(xy < 0.01 and yaw_ok and plan.eef[2] < cube[2] + self.HOVER + 0.015)
        if name == "descend":
            return bool(xy < 0.01 and plan.eef[2] < cube[2] + 0.008)
        if name == "grasp":
            return self._steps_in_phase(plan) >= GRASP_STEPS
        if name == "lift":
            return bool(plan.objects["cube"][2] > self._stack_height(plan, self.CLEARANCE))
        if name == "carry":
            base = plan.objects["base"] + self.place_offset
            return bool(np.linalg.norm(plan.objects["cube"][:2] - base[:2]) < 0.006)
        if name == "lower":
            return bool(plan.objects["cube"][2] < self._stack_height(plan, 0.006))
        if name == "release":
            return self._steps_in_phase(plan) >= RELEASE_STEPS
        return False


_DEMONSTRATORS: dict[str, type[ScriptedDemonstrator]] = {
    LiftDemonstrator.task: LiftDemonstrator,
    SquareDemonstrator.task: SquareDemonstrator,
    StackDemonstrator.task: StackDemonstrator,
}


def make_demonstrator(task: str, noise: float = 0.0, seed: int = 0) -> ScriptedDemonstrator:
    """Scripted demonstrator for ``task`` with ``noise`` in [0, 1] (0 = clean demonstrations)."""
    get_task(task)  # a clear error for unknown task names
    if task not in _DEMONSTRATORS:
        raise ValueError(f"task: no scripted demonstrator for {task!r}; have {sorted(_DEMONSTRATORS)}")
    return _DEMONSTRATORS[task](noise=noise, seed=seed)
