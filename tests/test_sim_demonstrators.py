"""Scripted demonstrators and direct rollouts on real robosuite/MuJoCo scenes."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.sim import make_demonstrator, make_env, run_episode

pytestmark = pytest.mark.sim


def _red_rows(frames: np.ndarray) -> np.ndarray:
    """Mean row of the strongly red pixels (the lift cube) in each frame; NaN when none."""
    rgb = frames.astype(int)
    red = (rgb[..., 0] > 100) & (rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 50)
    rows = np.arange(frames.shape[1])[None, :, None]
    count = red.sum(axis=(1, 2))
    return np.where(count > 0, (red * rows).sum(axis=(1, 2)) / np.maximum(count, 1), np.nan)


@pytest.fixture(scope="module")
def lift_camera_env():
    env = make_env("lift", image_size=64, cameras=("agentview",))
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_env():
    env = make_env("lift", cameras=())
    yield env
    env.close()


def test_scripted_lift_succeeds_and_images_are_upright(lift_camera_env):
    demo = make_demonstrator("lift", noise=0.0, seed=0)
    demo.reset()
    result = run_episode(lift_camera_env, lambda obs: demo.plan_chunk(obs, 8), seed=5, steps_after_success=6)
    assert result.success and result.success_step is not None
    assert result.success_step < lift_camera_env.max_steps
    assert result.length == result.success_step + 6
    frames = result.frames["agentview"]
    assert frames.shape == (result.length + 1, 64, 64, 3) and frames.dtype == np.uint8
    assert result.actions.shape == result.applied_actions.shape == (result.length, 7)
    assert result.joint_positions.shape == (result.length + 1, 9)
    # The simulator's own check agrees at the end: the cube is up.
    assert lift_camera_env.raw_env._check_success()
    # Upright frames: the lifted cube appears higher in the picture (smaller row index).
    rows = _red_rows(frames)
    start, end = np.nanmean(rows[:3]), np.nanmean(rows[-8:])  # the fingers may hide the cube in a frame
    assert end < start - 2, (start, end)
    # And the robot stands at the top of the agentview picture, the bright table below it.
    first = frames[0].mean(axis=(1, 2))
    assert first[:6].mean() < first[-16:].mean() - 40
    # A success within the horizon is recorded for its extra steps even past the horizon.
    demo.reset()
    late = run_episode(lift_camera_env, lambda obs: demo.plan_chunk(obs, 8), seed=5, steps_after_success=6,
                       max_steps=result.success_step, record_frames=False)
    assert late.success and late.length == result.success_step + 6 > late.success_step == result.success_step
    demo.reset()
    short = run_episode(lift_camera_env, lambda obs: demo.plan_chunk(obs, 8), seed=5, steps_after_success=6,
                        max_steps=result.success_step - 1, record_frames=False)
    assert not short.success and short.length == result.success_step - 1


def test_lift_demonstrator_on_a_few_seeds(lift_env):
    demo = make_demonstrator("lift", noise=0.0, seed=0)
    for seed in (0, 1, 2):
        demo.reset(seed=seed)
        result = run_episode(lift_env, lambda obs: demo.plan_chunk(obs, 8), seed=seed, record_frames=False)
        assert result.success, f"seed {seed}"
        assert result.frames == {}


@pytest.mark.parametrize(("task", "seed"), [("square", 3), ("stack", 1)])
def test_square_and_stack_demonstrators(task, seed):
    env = make_env(task, cameras=())
    try:
        demo = make_demonstrator(task, noise=0.0, seed=0)
        demo.reset(seed=seed)
        start = env.reset(seed=seed)
        assert not start.success
        result = run_episode(env, lambda obs: demo.plan_chunk(obs, 8), seed=seed, record_frames=False)
        assert result.success and result.success_step < env.max_steps
        state = env._observe(render=False).state
        if task == "square":  # the nut sits around the square peg, low on it
            assert np.linalg.norm(state["nut_pos"][:2] - state["peg_pos"][:2]) < 0.03
        else:  # the red cube rests on the green one
            assert np.linalg.norm(state["cube_a_pos"][:2] - state["cube_b_pos"][:2]) < 0.02
            assert state["cube_a_pos"][2] > state["cube_b_pos"][2] + 0.03
    finally:
        env.close()


def test_noise_produces_failures(lift_env):
    # Clean, these seeds lift the cube within 45 steps (see the bench); noisy, some must fail.
    demo = make_demonstrator("lift", noise=1.0, seed=0)
    outcomes = []
    for seed in range(4):
        demo.reset(seed=seed)
        result = run_episode(
            lift_env, lambda obs: demo.plan_chunk(obs, 8), seed=seed, max_steps=60, record_frames=False
        )
        outcomes.append(result.success)
    assert not all(outcomes), outcomes


def test_chunks_are_planned_open_loop(lift_env):
    obs = lift_env.reset(seed=4)
    demo = make_demonstrator("lift", noise=0.0, seed=0)
    chunk = demo.plan_chunk(obs, 8)
    assert chunk.shape == (8, 7) and np.all(np.isfinite(chunk))
    assert np.all(np.isin(chunk[:, 6], (-1.0, 1.0)))
    assert np.all(np.abs(chunk[:, :3]) <= 0.05 + 1e-12)
    # The hand starts well above the cube: the first chunk heads down towards it.
    assert chunk[:, 2].sum() < 0
    again = make_demonstrator("lift", noise=0.0, seed=0)
    assert np.allclose(again.act(obs), chunk[0])
    with pytest.raises(ValueError, match="k"):
        demo.plan_chunk(obs, 0)


def test_run_episode_executes_part_of_each_chunk_and_checks_shapes(lift_env):
    calls = []

    def policy(obs):
        calls.append(obs.step)
        return np.tile([0.0, 0.0, 0.005, 0.0, 0.0, 0.0, -1.0], (8, 1))

    result = run_episode(lift_env, policy, seed=0, max_steps=12, record_frames=False, execute_steps=4)
    assert calls == [0, 4, 8] and result.length == 12 and not result.success and result.success_step is None
    with pytest.raises(ValueError, match="policy_fn"):
        run_episode(lift_env, lambda obs: np.zeros((2, 6)), seed=0, max_steps=3, record_frames=False)


def test_unknown_demonstrator_task_is_a_clear_error():
    with pytest.raises(ValueError, match="task"):
        make_demonstrator("fly")
    with pytest.raises(ValueError, match="noise"):
        make_demonstrator("lift", noise=2.0)
