"""The simulated robot on real robosuite/MuJoCo scenes: seeding, images, action units, clipping."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.sim import make_env

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def lift_env():
    env = make_env("lift", image_size=64, cameras=("agentview", "wrist"))
    yield env
    env.close()


def _actions(n: int, seed: int) -> np.ndarray:
    actions = np.random.default_rng(seed).uniform(-0.02, 0.02, (n, 7))
    actions[:, 6] = -1.0
    return actions


def test_same_seed_same_start_state_whatever_ran_before(lift_env):
    first = lift_env.reset(seed=7)
    after_first = [lift_env.step(a) for a in _actions(6, 0)][-1]
    other = lift_env.reset(seed=8)
    for a in _actions(10, 1):  # leave the scene somewhere else before re-using seed 7
        lift_env.step(a)
    again = lift_env.reset(seed=7)
    after_again = [lift_env.step(a) for a in _actions(6, 0)][-1]

    for cam in ("agentview", "wrist"):
        assert np.array_equal(first.images[cam], again.images[cam])
    assert np.array_equal(first.state["cube_pos"], again.state["cube_pos"])
    assert np.array_equal(first.state["cube_quat"], again.state["cube_quat"])
    assert np.array_equal(first.joint_positions, again.joint_positions)
    # Identical start and identical actions give identical physics.
    assert np.array_equal(after_first.joint_positions, after_again.joint_positions)
    assert np.array_equal(after_first.images["wrist"], after_again.images["wrist"])

    # A different seed moves both the cube and the robot's initial joint noise.
    assert np.linalg.norm(first.state["cube_pos"][:2] - other.state["cube_pos"][:2]) > 1e-4
    assert np.abs(first.joint_positions[:7] - other.joint_positions[:7]).max() > 1e-4
    assert not np.array_equal(first.images["agentview"], other.images["agentview"])


def test_seed_reproduces_in_a_fresh_environment(lift_env):
    reference = lift_env.reset(seed=11)
    fresh = make_env("lift", image_size=64, cameras=("agentview",))
    try:
        obs = fresh.reset(seed=11)
        assert np.array_equal(obs.images["agentview"], reference.images["agentview"])
        assert np.array_equal(obs.state["cube_pos"], reference.state["cube_pos"])
    finally:
        fresh.close()


def test_observation_fields(lift_env):
    obs = lift_env.reset(seed=0)
    for cam in ("agentview", "wrist"):
        img = obs.images[cam]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
        assert img.std() > 5  # a rendered scene, not a blank buffer
    assert len(obs.joint_names) == len(obs.joint_positions) == 9
    assert (
        obs.joint_names[:2] == ["panda_joint1", "panda_joint2"]
        and obs.joint_names[-1] == "panda_finger_joint2"
    )
    assert np.allclose(obs.joint_positions[7:], obs.gripper_qpos)
    assert obs.eef_pos.shape == (3,) and obs.eef_quat.shape == (4,)
    assert np.isclose(np.linalg.norm(obs.eef_quat), 1.0)
    # The hand starts pointing down: xyzw close to a half turn about x.
    assert abs(obs.eef_quat[0]) > 0.95
    assert obs.success is False and obs.step == 0 and obs.applied_action is None
    assert obs.state["cube_pos"][2] < 0.9  # on the table (top at 0.8 m)
    assert lift_env.task == "lift" and lift_env.instruction == "lift the red cube"
    assert lift_env.control_hz == 20 and 100 <= lift_env.max_steps <= 150


def test_action_units_follow_the_controller_limits(lift_env):
    arm = lift_env.raw_env.robots[0].part_controllers["right"]
    assert np.allclose(lift_env.action_high[:6], arm.output_max)
    assert np.allclose(lift_env.action_low[:6], arm.output_min)
    controller_input, applied, clipped = lift_env.to_controller_input(
        np.array([0.01, -0.02, 0.0, 0.1, 0.0, -0.25, 1.0])
    )
    assert np.allclose(controller_input, [0.2, -0.4, 0.0, 0.2, 0.0, -0.5, 1.0])
    assert not clipped and np.allclose(applied, [0.01, -0.02, 0.0, 0.1, 0.0, -0.25, 1.0])


def test_x_action_moves_the_hand_along_x(lift_env):
    start = lift_env.reset(seed=3)
    obs = start
    for _ in range(20):
        obs = lift_env.step(np.array([0.01, 0, 0, 0, 0, 0, -1.0]))
    moved = obs.eef_pos - start.eef_pos
    # 20 steps of 1 cm under robosuite's OSC: about a quarter of the command lands per step.
    assert 0.03 < moved[0] < 0.07, moved
    assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01, moved
    back = obs
    for _ in range(10):
        back = lift_env.step(np.array([-0.01, 0, 0, 0, 0, 0, -1.0]))
    assert back.eef_pos[0] < obs.eef_pos[0] - 0.01


def test_clipping_is_reported_and_bad_actions_rejected(lift_env):
    lift_env.reset(seed=0)
    obs = lift_env.step(np.array([0.2, 0, 0, 0, 0, 0, -1.0]))
    assert obs.action_clipped and np.isclose(obs.applied_action[0], 0.05)
    assert lift_env.clipped_steps == 1
    obs = lift_env.step(np.array([0.01, 0, 0, 0, 0, 0, -1.0]))
    assert not obs.action_clipped and lift_env.clipped_steps == 1
    with pytest.raises(ValueError, match="action"):
        lift_env.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        lift_env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))
    assert lift_env.step_count == 2  # rejected actions did not step the simulation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task": "fly"}, "task"),
        ({"task": "lift", "cameras": ("top",)}, "cameras"),
        ({"task": "lift", "image_size": 32}, "image_size"),
        ({"task": "lift", "image_size": 300}, "image_size"),
        ({"task": "lift", "control_hz": 0}, "control_hz"),
    ],
)
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_env(**kwargs)


def test_image_size_and_camera_selection():
    env = make_env("square", image_size=96, cameras=("wrist",))
    try:
        obs = env.reset(seed=1)
        assert list(obs.images) == ["wrist"] and obs.images["wrist"].shape == (96, 96, 3)
        assert env.task == "square" and "square peg" in env.instruction and env.max_steps >= 300
        assert {"nut_pos", "nut_quat", "peg_pos", "nut_handle_pos"} <= set(obs.state)
        with pytest.raises(ValueError, match="camera"):
            env.render("agentview")
    finally:
        env.close()


def test_each_environment_renders_in_its_own_gl_context():
    """Two environments in one process (a test session, an evaluation beside a collection): building or closing
    one leaves the other's frames exactly as they were (before, closing one freed the other's GL objects and it
    rendered black); closing twice is harmless and rendering a closed environment is a clear error."""
    a = make_env("lift", image_size=64, cameras=("agentview",))
    a.reset(seed=3)
    before = a.render("agentview")
    assert before.mean() > 60  # a lit scene, not a black frame
    b = make_env("lift", image_size=64, cameras=("agentview",))
    try:
        b.reset(seed=4)
        b.render("agentview")
        assert np.array_equal(a.render("agentview"), before)
        b.close()
        assert np.array_equal(a.render("agentview"), before)
        b.close()
        with pytest.raises(RuntimeError, match="closed"):
            b.render("agentview")
    finally:
        b.close()
        a.close()


def _red_pixels(frame: np.ndarray) -> tuple[int, np.ndarray]:
    """Pixel count and centroid (row, col) of the red lift cube."""
    mask = (frame[..., 0].astype(int) - frame[..., 1].astype(int) > 60) & (frame[..., 0] > 90)
    rows, cols = np.nonzero(mask)
    return int(mask.sum()), np.array([rows.mean(), cols.mean()])


def test_workspace_camera_shows_the_lift_at_the_models_resolution():
    """`workspace` is agentview zoomed by the task's factor: the cube's 4 cm success lift spans >= 6 px at 64 px,
    the whole cube stays in view on every start state tried, and agentview renders as before."""
    from wmpo_core.sim.tasks import get_task

    env = make_env("lift", image_size=64, cameras=("agentview", "workspace"))
    plain = make_env("lift", image_size=64, cameras=("agentview",))
    try:
        zoom = get_task("lift").workspace_zoom
        ratio = np.tan(np.radians(env.camera_fovy("agentview")) / 2) / np.tan(np.radians(env.camera_fovy("workspace")) / 2)
        assert ratio == pytest.approx(zoom) and env.camera_fovy("agentview") == plain.camera_fovy("agentview")
        sim = env.raw_env.sim
        qpos = sim.model.jnt_qposadr[sim.model.joint_name2id("cube_joint0")]
        for seed in range(6):
            obs = env.reset(seed=seed)
            # Rendering workspace leaves agentview's own field of view untouched.
            assert np.array_equal(obs.images["agentview"], plain.reset(seed=seed).images["agentview"])
            area_far, at_rest = _red_pixels(obs.images["agentview"])
            area, before = _red_pixels(obs.images["workspace"])
            assert area >= 0.8 * zoom**2 * area_far  # the cube is ~zoom^2 times larger
            sim.data.qpos[qpos + 2] += 0.04  # the success lift, straight up
            sim.forward()
            _, lifted = _red_pixels(env.render("workspace"))
            _, lifted_far = _red_pixels(env.render("agentview"))
            assert np.linalg.norm(lifted - before) >= 6.0
            assert np.linalg.norm(lifted_far - at_rest) < 4.0  # what agentview showed: ~3 px
            frame = env.render("workspace")
            border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
            red = (border[:, 0].astype(int) - border[:, 1].astype(int) > 60) & (border[:, 0] > 90)
            assert not red.any()  # the lifted cube is still whole inside the frame
    finally:
        env.close()
        plain.close()
