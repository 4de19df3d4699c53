"""Arm kinematics from the robot description: forward kinematics, damped-least-squares IK
with joint limits, and the conversion of one end-effector delta action step into joint
targets that respect position and velocity limits.

The description is ``urdf/panda.urdf`` (derived from the simulator's MJCF, see
``urdf/panda.urdf.xacro``), so the end effector here is the point the simulator's OSC
controller moves and a delta means the same thing on the real arm and in simulation.
ROS-free: the ros2_control and MoveIt arm backends call into this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pinocchio as pin

from wmpo_core.control import ACTION_DIM

DEFAULT_JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
DEFAULT_BASE_FRAME = "panda_base"
DEFAULT_EE_FRAME = "panda_grip_site"
URDF_ENV_VAR = "WMPO_URDF"
MAX_IK_STEP = 0.2  # radians per IK iteration
STALL_ITERATIONS = 10


def default_urdf_path() -> Path:
    """Path of the packaged robot description.

    Order: ``$WMPO_URDF``; ``urdf/panda.urdf`` next to the source tree (pip editable
    install, docker image); ``share/wmpo/urdf/panda.urdf`` of a colcon install.
    """
    env = os.environ.get(URDF_ENV_VAR)
    if env:
        return Path(env)
    source_tree = Path(__file__).resolve().parents[2] / "urdf" / "panda.urdf"
    if source_tree.is_file():
        return source_tree
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("wmpo")) / "urdf" / "panda.urdf"
    except Exception:  # noqa: BLE001 - ament index absent or package not installed: report the source path
        return source_tree


@dataclass(frozen=True)
class IKResult:
    """Outcome of one inverse-kinematics solve (all poses in the robot base frame)."""

    q: np.ndarray
    reached: bool
    position_error: float  # metres
    rotation_error: float  # radians
    iterations: int


@dataclass(frozen=True)
class JointTargets:
    """Joint targets for one control period, produced from one action step."""

    q: np.ndarray  # arm joint positions, always within the position limits
    gripper: float  # -1 open .. +1 closed, passed through from the action
    reachable: bool  # False: the target pose has no IK solution; q is the closest reachable pose
    velocity_limited: bool  # True: the step was scaled down to respect the joint velocity limits
    position_error: float  # metres between the commanded and the reached end-effector position
    rotation_error: float  # radians between the commanded and the reached orientation

    @property
    def clamped(self) -> bool:
        """True when the arm will not fully execute the commanded step."""
        return (not self.reachable) or self.velocity_limited


class ArmKinematics:
    """Kinematic model of the arm joints between ``base_frame`` and ``ee_frame``.

    Joints of the description that are not in ``joint_names`` (the fingers) are locked
    at zero. Poses are 4x4 homogeneous matrices in the base frame.
    """

    def __init__(
        self,
        urdf_path: str | os.PathLike | None = None,
        *,
        joint_names: tuple[str, ...] | list[str] = DEFAULT_JOINT_NAMES,
        base_frame: str = DEFAULT_BASE_FRAME,
        ee_frame: str = DEFAULT_EE_FRAME,
        velocity_scale: float = 1.0,
        damping: float = 1e-3,
        max_iterations: int = 200,
        position_tolerance: float = 1e-4,
        rotation_tolerance: float = 1e-3,
    ) -> None:
        path = Path(urdf_path) if urdf_path is not None else default_urdf_path()
        if not path.is_file():
            raise FileNotFoundError(f"robot description {path} not found (set ${URDF_ENV_VAR} or urdf_path)")
        if not 0.0 < velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1], got {velocity_scale}")
        try:
            full = pin.buildModelFromUrdf(str(path))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid URDF: {exc}") from exc
        missing = [n for n in joint_names if not full.existJointName(n)]
        if missing:
            known = [full.names[i] for i in range(1, full.njoints)]
            raise ValueError(f"{path}: joint_names {missing} not in the description (joints: {known})")
        lock = [i for i in range(1, full.njoints) if full.names[i] not in joint_names]
        self.model = pin.buildReducedModel(full, lock, pin.neutral(full)) if lock else full
        self.data = self.model.createData()
        # Order of the reduced model's configuration vector vs. the caller's joint_names.
        order = [self.model.idx_qs[self.model.getJointId(n)] for n in joint_names]
        if sorted(order) != list(range(self.model.nq)) or self.model.nq != len(joint_names):
            raise ValueError(f"{path}: joint_names {list(joint_names)} must be single-DoF joints of the description")
        self._order = np.asarray(order)
        for frame in (base_frame, ee_frame):
            if not self.model.existFrame(frame):
                raise ValueError(f"{path}: frame {frame!r} not in the description")
        self.urdf_path = path
        self.joint_names = tuple(joint_names)
        self.base_frame, self.ee_frame = base_frame, ee_frame
        self._base_id = self.model.getFrameId(base_frame)
        self._ee_id = self.model.getFrameId(ee_frame)
        self.lower = self.model.lowerPositionLimit[self._order].copy()
        self.upper = self.model.upperPositionLimit[self._order].copy()
        self.velocity_limits = self.model.velocityLimit[self._order].copy() * velocity_scale
        self.damping = damping
        self.max_iterations = max_iterations
        self.position_tolerance = position_tolerance
        self.rotation_tolerance = rotation_tolerance
        # The base is attached by fixed joints, so its pose in the model root is constant.
        pin.framesForwardKinematics(self.model, self.data, pin.neutral(self.model))
        self._root_T_base = self.data.oMf[self._base_id].copy()

    @property
    def dof(self) -> int:
        """Number of controlled joints."""
        return len(self.joint_names)

    def _to_model(self, q: np.ndarray) -> np.ndarray:
        out = np.empty(self.model.nq)
        out[self._order] = q
        return out

    def _check_q(self, q: np.ndarray | list[float]) -> np.ndarray:
        q = np.asarray(q, dtype=float).reshape(-1)
        if q.shape != (self.dof,):
            raise ValueError(f"joint vector has {q.size} values, expected {self.dof} ({', '.join(self.joint_names)})")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"joint vector contains NaN or inf: {q.tolist()}")
        return q

    def within_limits(self, q: np.ndarray, tolerance: float = 1e-9) -> bool:
        """Whether every joint of ``q`` lies within its position limits."""
        q = np.asarray(q, dtype=float)
        return bool(np.all(q >= self.lower - tolerance) and np.all(q <= self.upper + tolerance))

    def _ee_root(self, q_model: np.ndarray) -> pin.SE3:
        pin.framesForwardKinematics(self.model, self.data, q_model)
        return self.data.oMf[self._ee_id]

    def fk(self, q: np.ndarray | list[float]) -> np.ndarray:
        """End-effector pose (4x4) in the base frame for joint positions ``q``."""
        q = self._check_q(q)
        return (self._root_T_base.actInv(self._ee_root(self._to_model(q)))).homogeneous

    def ik(
        self,
        target: np.ndarray,
        q0: np.ndarray | list[float],
        *,
        restarts: int = 0,
        seed: int | None = None,
    ) -> IKResult:
        """Damped-least-squares IK for a 4x4 base-frame target pose, starting from ``q0``.

        Iterates within the joint limits; a joint at a limit that the step would push
        further out is frozen for that step. If the tolerance is not met, up to
        ``restarts`` random starts are tried; the closest pose found is returned
        with ``reached=False``.
        """
        target = np.asarray(target, dtype=float)
        if target.shape != (4, 4) or not np.all(np.isfinite(target)):
            raise ValueError(f"target must be a finite 4x4 pose, got shape {target.shape}")
        root_T_target = self._root_T_base * pin.SE3(target[:3, :3], target[:3, 3])
        q_start = np.clip(self._check_q(q0), self.lower, self.upper)
        rng = np.random.default_rng(seed)
        best: IKResult | None = None
        for attempt in range(restarts + 1):
            start = q_start if attempt == 0 else rng.uniform(self.lower, self.upper)
            result = self._solve(root_T_target, start)
            if best is None or _score(result) < _score(best):
                best = result
            if best.reached:
                break
        assert best is not None
        return best

    def _solve(self, root_T_target: pin.SE3, q_start: np.ndarray) -> IKResult:
        model, data = self.model, self.data
        lower, upper = model.lowerPositionLimit, model.upperPositionLimit
        q = self._to_model(q_start)
        best_q, best_err = q.copy(), (np.inf, np.inf)
        eye6 = np.eye(6)
        iterations = stalled = 0
        for iteration in range(1, self.max_iterations + 1):
            iterations = iteration
            current = self._ee_root(q)
            err = np.concatenate(
                [root_T_target.translation - current.translation, pin.log3(root_T_target.rotation @ current.rotation.T)]
            )
            pos_err, rot_err = float(np.linalg.norm(err[:3])), float(np.linalg.norm(err[3:]))
            improvement = (best_err[0] + 0.1 * best_err[1]) - (pos_err + 0.1 * rot_err)
            if improvement > 0:
                best_q, best_err = q.copy(), (pos_err, rot_err)
            if pos_err < self.position_tolerance and rot_err < self.rotation_tolerance:
                break
            # An unreachable target stops improving: give up after STALL_ITERATIONS without 0.1 % progress.
            stalled = 0 if improvement > 1e-3 * (pos_err + 0.1 * rot_err) else stalled + 1
            if stalled >= STALL_ITERATIONS:
                break
            pin.computeJointJacobians(model, data, q)
            jac = pin.getFrameJacobian(model, data, self._ee_id, pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
            dq = _dls(jac, err, self.damping, eye6)
            # Freeze joints that sit at a limit and would be pushed beyond it, then re-solve.
            blocked = ((q <= lower + 1e-9) & (dq < 0)) | ((q >= upper - 1e-9) & (dq > 0))
            if blocked.any():
                jac = jac.copy()
                jac[:, blocked] = 0.0
                dq = _dls(jac, err, self.damping, eye6)
                dq[blocked] = 0.0
            # Bound the step: far or unreachable targets otherwise make DLS overshoot wildly.
            largest = float(np.max(np.abs(dq)))
            if largest > MAX_IK_STEP:
                dq *= MAX_IK_STEP / largest
            q = np.clip(q + dq, lower, upper)
        pos_err, rot_err = best_err
        reached = pos_err < self.position_tolerance and rot_err < self.rotation_tolerance
        return IKResult(
            q=best_q[self._order].copy(),
            reached=bool(reached),
            position_error=pos_err,
            rotation_error=rot_err,
            iterations=iterations,
        )

    def ee_delta_to_joint_targets(
        self,
        q: np.ndarray | list[float],
        action_step: np.ndarray | list[float],
        control_period: float = 0.05,
        *,
        reach_tolerance: tuple[float, float] = (1e-3, np.radians(1.0)),
    ) -> JointTargets:
        """Joint targets that move the end effector by one action step within one control period.

        ``action_step`` is the 7-float step of docs/interfaces.md: base-frame position
        delta (m), axis-angle orientation delta (rad), gripper (-1 open, +1 closed).
        The target pose is solved by IK from ``q``; if it is unreachable the closest
        reachable pose is used and ``reachable`` is False. The joint step is then scaled
        uniformly so no joint exceeds its velocity limit over ``control_period``
        (``velocity_limited``). The result never leaves the joint position limits.
        """
        q = np.clip(self._check_q(q), self.lower, self.upper)
        step = np.asarray(action_step, dtype=float).reshape(-1)
        if step.shape != (ACTION_DIM,) or not np.all(np.isfinite(step)):
            raise ValueError(f"action step must be {ACTION_DIM} finite floats, got {step.tolist()}")
        if control_period <= 0:
            raise ValueError(f"control_period must be positive, got {control_period}")
        current = self.fk(q)
        target = np.eye(4)
        target[:3, 3] = current[:3, 3] + step[:3]
        target[:3, :3] = pin.exp3(step[3:6]) @ current[:3, :3]
        solved = self.ik(target, q)
        reachable = solved.position_error < reach_tolerance[0] and solved.rotation_error < reach_tolerance[1]
        dq = solved.q - q
        max_step = self.velocity_limits * control_period
        ratio = float(np.max(np.abs(dq) / max_step)) if dq.size else 0.0
        velocity_limited = ratio > 1.0
        if velocity_limited:
            dq = dq / ratio
        q_target = np.clip(q + dq, self.lower, self.upper)
        reached = self.fk(q_target)
        position_error = float(np.linalg.norm(reached[:3, 3] - target[:3, 3]))
        rotation_error = float(np.linalg.norm(pin.log3(target[:3, :3] @ reached[:3, :3].T)))
        return JointTargets(
            q=q_target,
            gripper=float(np.clip(step[6], -1.0, 1.0)),
            reachable=bool(reachable),
            velocity_limited=velocity_limited,
            position_error=position_error,
            rotation_error=rotation_error,
        )


def _dls(jac: np.ndarray, err: np.ndarray, damping: float, eye6: np.ndarray) -> np.ndarray:
    # dq = J^T (J J^T + lambda^2 I)^-1 e: well defined near singularities, unlike the pseudo-inverse.
    return jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * eye6, err)


def _score(result: IKResult) -> float:
    # 0.1 m per radian: a 1 degree error weighs like 1.7 mm, the scale of the tolerances.
    return result.position_error + 0.1 * result.rotation_error
