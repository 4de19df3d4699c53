"""The robot-side safety layer shared by every arm backend (pure numpy, no ROS).

Three pieces, used in this order on every control tick:

1. `ChunkScheduler` picks the step of the current action chunk for this tick from the
   time elapsed since the chunk's observation stamp (a late chunk starts at a later
   step, a step is never served twice), rejects malformed chunks while keeping the
   previous one, and answers HOLD when the chunk is exhausted or when no chunk arrived
   for `watchdog_periods` control periods.
2. `SafetyFilter.apply` clamps that step: workspace box for the end effector, translation
   and rotation per step (per axis and by norm), gripper range; a non-finite step or an
   unknown end-effector position becomes a hold.
3. `EStop` latches: once engaged every tick holds until it is released explicitly.

Holding = zero translation and rotation delta with the gripper command unchanged.
Action layout (docs/interfaces.md): [dx, dy, dz, droll, dpitch, dyaw, gripper], metres /
radians per control period, gripper -1 open .. +1 closed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wmpo_core.control import ACTION_DIM, GRIPPER_OPEN

# Event names reported by SafetyFilter.apply (also the diagnostics counter keys).
CLAMP_WORKSPACE = "clamp_workspace"
CLAMP_TRANSLATION = "clamp_translation"
CLAMP_ROTATION = "clamp_rotation"
CLAMP_GRIPPER = "clamp_gripper"
REJECT_NONFINITE = "reject_nonfinite"
REJECT_SHAPE = "reject_shape"
NO_EEF_POSITION = "no_eef_position"
OUTSIDE_WORKSPACE = "outside_workspace"

# Reasons a ScheduledStep holds.
HOLD_NO_CHUNK = "no_chunk"
HOLD_EXHAUSTED = "chunk_exhausted"
HOLD_WATCHDOG = "watchdog"
HOLD_ESTOP = "estop"


@dataclass
class SafetyLimits:
    """Limits applied to every action step before it reaches the robot.

    The workspace defaults are deliberately wide (they contain any Panda pose in either
    the robosuite world frame or the robot base frame); a robot setup narrows them in
    its config file.
    """

    workspace_min: tuple[float, float, float] = (-1.0, -1.0, -0.2)  # end-effector box, metres
    workspace_max: tuple[float, float, float] = (1.0, 1.0, 1.6)
    # Per axis: the controller's own input range (robosuite OSC: 0.05 m, 0.5 rad), so the step
    # recorded as applied is the step the controller executes, not one it clips further.
    max_axis_translation_per_step: float = 0.05  # metres, each of dx, dy, dz
    max_axis_rotation_per_step: float = 0.5  # radians, each axis-angle component
    # Norm (speed) limits; the defaults only bind beyond the per-axis box (0.05 * sqrt(3) m).
    max_translation_per_step: float = 0.087  # metres (norm of dx, dy, dz)
    max_rotation_per_step: float = 0.87  # radians (norm of the axis-angle delta)
    gripper_min: float = -1.0
    gripper_max: float = 1.0
    watchdog_periods: int = 12  # hold when no chunk was accepted for this many control periods
    max_chunk_delay_periods: float = 6.0  # reject a chunk whose observation is older than this
    skip_stale_steps: bool = True  # a late chunk starts at the step its delay calls for
    initial_gripper: float = GRIPPER_OPEN  # gripper command held before any step was applied

    def __post_init__(self) -> None:
        self.workspace_min = tuple(float(v) for v in self.workspace_min)  # type: ignore[assignment]
        self.workspace_max = tuple(float(v) for v in self.workspace_max)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the limits are inconsistent."""
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ValueError("SafetyLimits.workspace_min/workspace_max: expected 3 values (x, y, z) each")
        values = [*self.workspace_min, *self.workspace_max, self.max_translation_per_step, self.max_rotation_per_step,
                  self.max_axis_translation_per_step, self.max_axis_rotation_per_step,
                  self.gripper_min, self.gripper_max, self.max_chunk_delay_periods, self.initial_gripper]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("SafetyLimits: every limit must be finite")
        for axis, lo, hi in zip("xyz", self.workspace_min, self.workspace_max, strict=True):
            if lo > hi:
                raise ValueError(f"SafetyLimits.workspace_min.{axis}={lo} is above workspace_max.{axis}={hi}")
        for name in ("max_translation_per_step", "max_rotation_per_step", "max_axis_translation_per_step",
                     "max_axis_rotation_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"SafetyLimits.{name}: must be >= 0, got {getattr(self, name)}")
        if self.gripper_min > self.gripper_max:
            raise ValueError(f"SafetyLimits.gripper_min={self.gripper_min} is above gripper_max={self.gripper_max}")
        if not self.gripper_min <= self.initial_gripper <= self.gripper_max:
            raise ValueError("SafetyLimits.initial_gripper: must lie in [gripper_min, gripper_max]")
        if int(self.watchdog_periods) < 1:
            raise ValueError(f"SafetyLimits.watchdog_periods: must be >= 1, got {self.watchdog_periods}")
        if self.max_chunk_delay_periods <= 0:
            raise ValueError("SafetyLimits.max_chunk_delay_periods: must be > 0")


def _clip_axes(v: np.ndarray, max_abs: float) -> tuple[np.ndarray, bool]:
    clipped = np.clip(v, -max_abs, max_abs)
    return clipped, bool(np.any(clipped != v))


def _clip_norm(v: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    norm = float(np.linalg.norm(v))
    if norm <= max_norm:
        return v, False
    return v * (max_norm / norm), True


class SafetyFilter:
    """Clamps one action step; remembers the last applied gripper command for holds."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self._lo = np.asarray(limits.workspace_min, dtype=np.float64)
        self._hi = np.asarray(limits.workspace_max, dtype=np.float64)
        self.last_gripper = float(limits.initial_gripper)

    def hold_action(self) -> np.ndarray:
        """Zero translation / rotation delta, gripper command unchanged."""
        hold = np.zeros(ACTION_DIM, dtype=np.float64)
        hold[6] = self.last_gripper
        return hold

    def apply(self, action: Sequence[float] | np.ndarray, eef_pos: Sequence[float] | np.ndarray | None) -> tuple[np.ndarray, list[str]]:
        """Return (safe_action, events).

        The translation is clipped so that eef_pos + translation stays inside the
        workspace box (per axis: motion along a wall is kept; from outside the box the
        end effector may move back in but never further out), then translation and
        rotation are clipped per axis and by norm to their per-step limits, and the
        gripper to its range.
        A step with NaN / inf, of the wrong shape, or with no finite end-effector
        position is rejected: the result is the hold action.
        """
        events: list[str] = []
        a = np.asarray(action, dtype=np.float64).reshape(-1) if np.size(action) else np.zeros(0)
        if a.shape != (ACTION_DIM,):
            return self.hold_action(), [REJECT_SHAPE]
        if not np.all(np.isfinite(a)):
            return self.hold_action(), [REJECT_NONFINITE]
        pos = None if eef_pos is None else np.asarray(eef_pos, dtype=np.float64).reshape(-1)
        if pos is None or pos.shape != (3,) or not np.all(np.isfinite(pos)):
            return self.hold_action(), [NO_EEF_POSITION]

        out = a.copy()
        lo = np.minimum(self._lo, pos)  # from outside, never pushed in, never further out
        hi = np.maximum(self._hi, pos)
        if np.any(pos < self._lo) or np.any(pos > self._hi):
            events.append(OUTSIDE_WORKSPACE)
        target = np.clip(pos + out[:3], lo, hi)
        clipped = target - pos
        if np.any(np.abs(clipped - out[:3]) > 1e-12):
            events.append(CLAMP_WORKSPACE)
            out[:3] = clipped
        lim = self.limits
        out[:3], axis_clamped = _clip_axes(out[:3], lim.max_axis_translation_per_step)
        out[:3], norm_clamped = _clip_norm(out[:3], lim.max_translation_per_step)
        if axis_clamped or norm_clamped:
            events.append(CLAMP_TRANSLATION)
        out[3:6], axis_clamped = _clip_axes(out[3:6], lim.max_axis_rotation_per_step)
        out[3:6], norm_clamped = _clip_norm(out[3:6], lim.max_rotation_per_step)
        if axis_clamped or norm_clamped:
            events.append(CLAMP_ROTATION)
        g = float(np.clip(out[6], self.limits.gripper_min, self.limits.gripper_max))
        if g != out[6]:
            events.append(CLAMP_GRIPPER)
            out[6] = g
        self.last_gripper = float(out[6])
        return out, events


@dataclass
class ScheduledStep:
    """What the scheduler serves for one tick: a step of a chunk, or HOLD with a reason."""

    action: np.ndarray | None
    hold_reason: str = ""
    chunk_id: int = -1
    index: int = -1
    skipped: int = 0  # steps skipped because their time had passed

    @property
    def hold(self) -> bool:
        """True when the tick must hold position."""
        return self.action is None


@dataclass
class _Chunk:
    actions: np.ndarray
    stamp_ns: int
    period_ns: int
    received_ns: int
    chunk_id: int
    next_index: int = 0


@dataclass
class ChunkScheduler:
    """Serves action-chunk steps by time since the chunk's observation stamp.

    Times are integer nanoseconds on one clock (the ROS clock of the arm node). Thread
    safe: chunks arrive from a subscription, ticks from a timer.
    """

    limits: SafetyLimits
    control_period_s: float
    chunk_size: int | None = None  # expected K; None accepts any K >= 1
    _current: _Chunk | None = field(default=None, init=False, repr=False)
    _last_accept_ns: int | None = field(default=None, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.control_period_s > 0 or not math.isfinite(self.control_period_s):
            raise ValueError(f"ChunkScheduler.control_period_s: must be a positive number, got {self.control_period_s}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"ChunkScheduler.chunk_size: must be >= 1, got {self.chunk_size}")

    @property
    def period_ns(self) -> int:
        """Control period in nanoseconds."""
        return int(round(self.control_period_s * 1e9))

    def submit(self, chunk: np.ndarray, stamp_ns: int, now_ns: int, period_s: float | None = None) -> tuple[bool, str]:
        """Offer a chunk observed at `stamp_ns`; returns (accepted, reason).

        Rejected (previous chunk kept): wrong shape, NaN / inf, observation older than
        the current chunk's, older than `max_chunk_delay_periods`, stamped more than one
        period in the future, or with every step already stale.
        """
        period_ns = int(round((period_s if period_s and period_s > 0 else self.control_period_s) * 1e9))
        try:
            arr = np.array(chunk, dtype=np.float64)
        except (TypeError, ValueError):
            return False, "chunk is not numeric"
        if arr.ndim != 2 or arr.shape[1] != ACTION_DIM or arr.shape[0] < 1:
            return False, f"shape {arr.shape}, expected (K, {ACTION_DIM})"
        if self.chunk_size is not None and arr.shape[0] != self.chunk_size:
            return False, f"chunk of {arr.shape[0]} steps, expected {self.chunk_size}"
        if not np.all(np.isfinite(arr)):
            return False, "non-finite value (NaN or inf)"
        elapsed = now_ns - int(stamp_ns)
        if elapsed < -period_ns:
            return False, f"observation stamp {-elapsed / 1e6:.1f} ms in the future"
        if elapsed > self.limits.max_chunk_delay_periods * period_ns:
            return False, f"observation {elapsed / 1e6:.1f} ms old, limit {self.limits.max_chunk_delay_periods} periods"
        with self._lock:
            if self._current is not None and int(stamp_ns) < self._current.stamp_ns:
                return False, "observation older than the current chunk's"
            first = max(0, elapsed // period_ns) if self.limits.skip_stale_steps else 0
            if first >= arr.shape[0]:
                return False, f"all {arr.shape[0]} steps already stale"
            self._current = _Chunk(arr, int(stamp_ns), period_ns, now_ns, self._next_id)
            self._next_id += 1
            self._last_accept_ns = now_ns
        return True, "accepted"

    def step(self, now_ns: int) -> ScheduledStep:
        """The step for the tick at `now_ns`, or HOLD (no chunk, exhausted, watchdog)."""
        with self._lock:
            watchdog_ns = int(self.limits.watchdog_periods) * self.period_ns
            if self._current is None:
                return ScheduledStep(None, HOLD_NO_CHUNK)
            if self._last_accept_ns is not None and now_ns - self._last_accept_ns > watchdog_ns:
                return ScheduledStep(None, HOLD_WATCHDOG, self._current.chunk_id)
            c = self._current
            due = max(0, (now_ns - c.stamp_ns) // c.period_ns) if self.limits.skip_stale_steps else c.next_index
            index = max(c.next_index, int(due))  # never serve a step twice, skip the stale ones
            if index >= c.actions.shape[0]:
                c.next_index = c.actions.shape[0]
                return ScheduledStep(None, HOLD_EXHAUSTED, c.chunk_id)
            skipped = index - c.next_index
            c.next_index = index + 1
            return ScheduledStep(c.actions[index].copy(), "", c.chunk_id, index, skipped)

    def clear(self) -> None:
        """Drop the current chunk (e.g. on e-stop, so release does not resume an old plan)."""
        with self._lock:
            self._current = None


class EStop:
    """Emergency-stop latch: engaged until released explicitly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engaged = False
        self.reason = ""
        self.count = 0

    @property
    def engaged(self) -> bool:
        """True while latched."""
        with self._lock:
            return self._engaged

    def engage(self, reason: str = "operator") -> None:
        """Latch the stop (idempotent)."""
        with self._lock:
            if not self._engaged:
                self.count += 1
            self._engaged, self.reason = True, reason

    def release(self) -> bool:
        """Unlatch; returns whether it was engaged."""
        with self._lock:
            was, self._engaged, self.reason = self._engaged, False, ""
            return was
