"""The simulated robot: a Panda on robosuite 1.5 tasks behind the project's action and observation contract.

Actions are physical (metres, radians, gripper -1 open / +1 closed, robot base frame) and
are mapped onto robosuite's normalized OSC_POSE input through the live controller's own
input / output limits. Resets are seeded: ``reset(seed=S)`` reproduces the same object
placement and robot initialization noise whatever ran before.

Note on the OSC controller: its delta input moves the goal by the commanded amount from the
*current* pose every step, and the impedance loop (kp 150, critically damped) covers only
about a quarter of it within one 50 ms period, so a sustained command of ``d`` metres per
step moves the hand about ``0.25 d`` per step (measured). Learned and scripted policies see
this as part of the dynamics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from wmpo_core.control import ACTION_DIM
from wmpo_core.sim.observation import Observation
from wmpo_core.sim.tasks import CAMERAS, TaskSpec, get_task

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

log = logging.getLogger(__name__)

JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8)) + (
    "panda_finger_joint1",
    "panda_finger_joint2",
)
IMAGE_SIZE_RANGE = (64, 256)
# Seed of the model build: object sizes (e.g. the Lift cube) are drawn once at build time and
# must not differ between processes, or the same reset seed would give different scenes.
MODEL_SEED = 0

# robosuite messages that are harmless for a Panda (no private macro file, no robosuite_models,
# no mink whole-body IK for GR1); matched by substring.
_HARMLESS = (
    "private macro",
    "setup_macros.py",
    "robosuite_models",
    "mink-based",
    "Loading controller configuration",
)


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS)


def _import_robosuite():
    """Import robosuite with its harmless start-up warnings filtered (logging only, no patching)."""
    # robosuite's DefaultLogger resets the level when it is created, but filters survive that.
    logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, _DropHarmless) for f in logger.filters):
        logger.addFilter(_DropHarmless())
    import robosuite
    import robosuite.utils.transform_utils as transform

    if logger.level < logging.WARNING:
        logger.setLevel(logging.WARNING)
    return robosuite, transform


class SimEnv:
    """One simulated task with a Panda arm, OSC_POSE control, and offscreen cameras.

    Build it with :func:`make_env`. The underlying robosuite environment is ``raw_env``
    (for inspection; stepping it directly bypasses unit conversion and bookkeeping).
    """

    def __init__(
        self,
        spec: TaskSpec,
        *,
        image_size: int = 64,
        cameras: Sequence[str] = ("agentview", "wrist"),
        control_hz: int = 20,
        max_steps: int | None = None,
        fast_render: bool = True,
    ) -> None:
        if isinstance(cameras, str):
            cameras = (cameras,)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"cameras: unknown camera(s) {unknown}; expected names from {sorted(CAMERAS)}")
        if (
            not isinstance(image_size, int | np.integer)
            or not IMAGE_SIZE_RANGE[0] <= image_size <= IMAGE_SIZE_RANGE[1]
        ):
            raise ValueError(
                f"image_size: expected an integer in {list(IMAGE_SIZE_RANGE)}, got {image_size!r}"
            )
        if not isinstance(control_hz, int | np.integer) or control_hz <= 0:
            raise ValueError(f"control_hz: expected a positive integer, got {control_hz!r}")
        if max_steps is not None and (not isinstance(max_steps, int | np.integer) or max_steps <= 0):
            raise ValueError(f"max_steps: expected a positive integer or None, got {max_steps!r}")

        robosuite, self._transform = _import_robosuite()
        from robosuite.controllers import load_composite_controller_config

        self.spec = spec
        self.cameras: tuple[str, ...] = tuple(cameras)
        self.image_size = int(image_size)
        self.control_hz = int(control_hz)
        self.max_steps = int(max_steps) if max_steps is not None else spec.max_steps
        self.fast_render = bool(fast_render)
        # The Panda's own default is the BASIC composite with an OSC_POSE arm and a GRIP gripper
        # (robosuite's generic basic.json also declares body parts a Panda lacks and warns about them).
        controller_config = load_composite_controller_config(robot="Panda")
        self.raw_env = robosuite.make(
            spec.env_name,
            robots="Panda",
            controller_configs=controller_config,
            has_renderer=False,
            has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=False,  # cameras are rendered here, only those requested, once per step
            use_object_obs=True,
            reward_shaping=False,
            control_freq=self.control_hz,
            horizon=10**9,  # episode length is enforced by the caller through max_steps
            ignore_done=True,
            hard_reset=False,  # a hard reset rebuilds the model: ~2 s instead of a few ms
            seed=MODEL_SEED,
        )
        self._robot = self.raw_env.robots[0]
        self._setup_controller_limits()
        self._setup_indexes()
        self._check_base_frame()
        self._setup_rng_sharing()
        self._gl: Any = None  # this environment's GL context (set when it renders cameras)
        if self.cameras:
            self._configure_rendering()
        self._fovy = self._camera_fovy()
        self._step = 0
        self.seed: int | None = None
        self.clipped_steps = 0

    # ----------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        """Project task name (``lift``, ``square``, ``stack``)."""
        return self.spec.name

    @property
    def instruction(self) -> str:
        """The language instruction of the task."""
        return self.spec.instruction

    @property
    def step_count(self) -> int:
        """Control steps since the last reset."""
        return self._step

    # ----------------------------------------------------------------- setup
    def _setup_controller_limits(self) -> None:
        """Read the OSC arm and gripper ranges from the live controllers (the config's own numbers)."""
        parts = self._robot.part_controllers
        if set(parts) != {"right", "right_gripper"}:
            raise RuntimeError(f"controller: expected parts ['right', 'right_gripper'], got {sorted(parts)}")
        arm, grip = parts["right"], parts["right_gripper"]
        if type(arm).__name__ != "OperationalSpaceController" or arm.control_dim != 6:
            raise RuntimeError(
                f"controller: expected a 6-d OSC_POSE arm controller, got {type(arm).__name__}"
            )
        if self._robot.action_dim != ACTION_DIM:
            raise RuntimeError(
                f"controller: expected a {ACTION_DIM}-d action, robosuite wants {self._robot.action_dim}"
            )
        # robosuite maps input [input_min, input_max] linearly onto [output_min, output_max]
        # (Controller.scale_action); the inverse of that map turns physical units into its input.
        self._in_min = np.broadcast_to(np.asarray(arm.input_min, dtype=float), (6,)).copy()
        self._in_max = np.broadcast_to(np.asarray(arm.input_max, dtype=float), (6,)).copy()
        self._out_min = np.broadcast_to(np.asarray(arm.output_min, dtype=float), (6,)).copy()
        self._out_max = np.broadcast_to(np.asarray(arm.output_max, dtype=float), (6,)).copy()
        self._grip_min = float(np.min(grip.input_min))
        self._grip_max = float(np.max(grip.input_max))
        self.action_low = np.concatenate([self._out_min, [self._grip_min]])
        """Smallest physical action per dimension the controller accepts (metres, radians, gripper)."""
        self.action_high = np.concatenate([self._out_max, [self._grip_max]])
        """Largest physical action per dimension the controller accepts."""

    def _setup_indexes(self) -> None:
        robot = self._robot
        self._arm_qpos_idx = np.asarray(robot._ref_joint_pos_indexes)
        self._grip_qpos_idx = np.asarray(robot._ref_gripper_joint_pos_indexes["right"])
        if len(self._arm_qpos_idx) != 7 or len(self._grip_qpos_idx) != 2:
            raise RuntimeError("robot: expected a 7-joint arm with a 2-finger gripper")
        model = self.raw_env.sim.model
        self._eef_site = robot.eef_site_id["right"]
        self._eef_body = model.body_name2id(robot.robot_model.eef_name["right"])
        self._bodies = {prefix: model.body_name2id(name) for prefix, name in self.spec.bodies.items()}
        self._sites = {key: model.site_name2id(name) for key, name in self.spec.sites.items()}

    def _check_base_frame(self) -> None:
        """Actions are in the base frame and positions in the world frame: they must share axes."""
        rot = self.raw_env.sim.data.get_body_xmat(self._robot.robot_model.root_body).reshape(3, 3)
        if not np.allclose(rot, np.eye(3), atol=1e-6):
            raise RuntimeError(
                f"{self.task}: robot base is rotated in the world; world and base frames differ"
            )

    def _setup_rng_sharing(self) -> None:
        """robosuite draws placements and init noise from ``env.rng``; make sure every sampler shares it.

        Object placement samplers and the robot's joint noise receive ``env.rng`` by reference at
        build time (robosuite 1.5.2); reseeding that one Generator in place at each reset therefore
        fixes the whole start state. A sampler holding its own generator would break this.
        """
        env = self.raw_env
        samplers = [env.placement_initializer]
        samplers += list(getattr(env.placement_initializer, "samplers", {}).values())
        for sampler in samplers:
            if getattr(sampler, "rng", env.rng) is not env.rng:
                sampler.rng = env.rng  # a sampler with a private generator would escape the seed

    def _configure_rendering(self) -> None:
        ctx = self.raw_env.sim._render_context_offscreen
        if ctx is None:
            raise RuntimeError("rendering: robosuite created no offscreen render context")
        # Each environment owns a GL context, and GL calls act on whichever context is current in the
        # thread. robosuite makes its context current only when it builds it, so after a second
        # environment was built (or one closed: robosuite's free releases the thread's context) this
        # one would render into, or free the objects of, another context: black frames, or a crash.
        self._gl = ctx.gl_ctx
        import mujoco

        # Shadows, reflections and the skybox cost well over half the frame time on a software GL and
        # carry nothing a 64-256 px policy or world model needs.
        on = 0 if self.fast_render else 1
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            ctx.scn.flags[flag] = on

    def _camera_fovy(self) -> dict[str, tuple[int, float, float]]:
        """Project camera -> (MuJoCo camera id, its own fovy, the fovy to render with), in degrees."""
        model = self.raw_env.sim.model
        out: dict[str, tuple[int, float, float]] = {}
        for camera in self.cameras:
            cam_id = model.camera_name2id(CAMERAS[camera])
            fovy = float(model.cam_fovy[cam_id])
            if camera == "workspace":
                zoom = float(self.spec.workspace_zoom)
                out[camera] = (cam_id, fovy, float(np.degrees(2 * np.arctan(np.tan(np.radians(fovy) / 2) / zoom))))
            else:
                out[camera] = (cam_id, fovy, fovy)
        return out

    # ----------------------------------------------------------------- actions
    def to_controller_input(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Map a physical 7-d action to robosuite's normalized input.

        Returns ``(controller_input, applied_physical_action, clipped)``; ``applied`` is the
        physical action after clipping to the controller's range. Raises ValueError on a wrong
        shape or a non-finite value.
        """
        a = np.asarray(action, dtype=float)
        if a.shape != (ACTION_DIM,):
            raise ValueError(
                f"action: expected shape ({ACTION_DIM},) [ee_dx..ee_dyaw, gripper], got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action: non-finite value(s) {a.tolist()}")
        applied = np.clip(a, self.action_low, self.action_high)
        clipped = bool(np.any(applied != a))
        scale = (self._out_max - self._out_min) / (self._in_max - self._in_min)
        out_mid = (self._out_max + self._out_min) / 2.0
        in_mid = (self._in_max + self._in_min) / 2.0
        arm_in = (applied[:6] - out_mid) / scale + in_mid
        controller_input = np.concatenate([np.clip(arm_in, self._in_min, self._in_max), applied[6:]])
        return controller_input, applied, clipped

    # ----------------------------------------------------------------- episode
    def reset(self, seed: int | None = None, *, render: bool = True) -> Observation:
        """Start an episode. The same ``seed`` gives the same start state; None draws a fresh one."""
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        # Reseed in place: the samplers and the robot hold references to this very Generator.
        self.raw_env.rng.bit_generator.state = np.random.default_rng(self.seed).bit_generator.state
        self.raw_env.reset()
        self._step = 0
        self.clipped_steps = 0
        return self._observe(render=render)

    def step(self, action: np.ndarray, *, render: bool = True) -> Observation:
        """Apply one physical action (7,) for one control period and observe."""
        controller_input, applied, clipped = self.to_controller_input(action)
        if clipped:
            self.clipped_steps += 1
            log.debug(
                "action clipped to the controller range: %s -> %s",
                np.asarray(action).tolist(),
                applied.tolist(),
            )
        self.raw_env.step(controller_input)
        self._step += 1
        obs = self._observe(render=render)
        obs.applied_action = applied
        obs.action_clipped = clipped
        return obs

    def camera_fovy(self, camera: str) -> float:
        """Vertical field of view of ``camera`` in degrees, as rendered (``workspace``: narrowed by the zoom)."""
        return self._fovy[camera][2]

    def render(self, camera: str) -> np.ndarray:
        """One upright HxWx3 uint8 frame of ``camera`` at the current state."""
        if camera not in self.cameras:
            raise ValueError(f"camera: {camera!r} was not requested at make_env (have {list(self.cameras)})")
        if self._gl is None:
            raise RuntimeError("render: the environment is closed")
        size = self.image_size
        cam_id, own, fovy = self._fovy[camera]
        model = self.raw_env.sim.model
        model.cam_fovy[cam_id] = fovy  # ``workspace`` shares agentview's camera with a narrower view
        try:
            self._gl.make_current()
            frame = self.raw_env.sim.render(width=size, height=size, camera_name=CAMERAS[camera])
        finally:
            model.cam_fovy[cam_id] = own
        return np.ascontiguousarray(frame[::-1])  # OpenGL rows run bottom-up

    def _observe(self, *, render: bool) -> Observation:
        data = self.raw_env.sim.data
        transform = self._transform
        state: dict[str, np.ndarray] = {}
        for prefix, body in self._bodies.items():
            state[f"{prefix}_pos"] = np.array(data.xpos[body])
            state[f"{prefix}_quat"] = transform.convert_quat(np.array(data.xquat[body]), to="xyzw")
        for key, site in self._sites.items():
            state[key] = np.array(data.site_xpos[site])
        gripper = np.array(data.qpos[self._grip_qpos_idx])
        return Observation(
            images={cam: self.render(cam) for cam in self.cameras} if render else {},
            joint_names=list(JOINT_NAMES),
            joint_positions=np.concatenate([np.array(data.qpos[self._arm_qpos_idx]), gripper]),
            eef_pos=np.array(data.site_xpos[self._eef_site]),
            eef_quat=transform.convert_quat(np.array(data.xquat[self._eef_body]), to="xyzw"),
            gripper_qpos=gripper,
            state=state,
            success=bool(self.raw_env._check_success()),
            step=self._step,
            info={"seed": self.seed, "timeout": self._step >= self.max_steps},
        )

    def close(self) -> None:
        """Release the render context and the simulation (a second call does nothing)."""
        gl, self._gl = self._gl, None
        if gl is not None and self.raw_env.sim is not None:
            gl.make_current()  # robosuite frees the render context's GL objects in the current context
        self.raw_env.close()

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_env(
    task: str,
    *,
    image_size: int = 64,
    cameras: Sequence[str] = ("agentview", "wrist"),
    control_hz: int = 20,
    max_steps: int | None = None,
    fast_render: bool = True,
) -> SimEnv:
    """Build the simulated robot for ``task`` (``lift``, ``square``, ``stack``).

    Only the requested ``cameras`` (``agentview``, ``wrist``) are rendered, square frames of
    ``image_size`` pixels (64..256). ``max_steps`` defaults to the task's horizon.
    ``fast_render=False`` keeps shadows, reflections and the skybox (for comparison only).
    """
    return SimEnv(
        get_task(task),
        image_size=image_size,
        cameras=cameras,
        control_hz=control_hz,
        max_steps=max_steps,
        fast_render=fast_render,
    )


def measure_steps_per_second(env: SimEnv, steps: int = 30, seed: int = 0) -> float:
    """Control steps per second of ``env`` under zero motion, cameras rendered every step."""
    env.reset(seed=seed)
    action = np.zeros(ACTION_DIM)
    action[6] = -1.0
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return steps / (time.perf_counter() - start)
