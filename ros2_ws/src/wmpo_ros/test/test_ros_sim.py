"""Simulated robot node over real DDS: seeded resets, lockstep steps, stamps, bad commands, pause."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import RosProbe, start_node  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    COMMAND_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    chunk_to_trajectory,
    image_to_numpy,
    stamp_to_ns,
)

pytestmark = [pytest.mark.ros, pytest.mark.sim]
DOMAIN = 45


def set_params(probe: RosProbe, node: str, **values) -> None:
    """SetParameters on `node`, asserting success."""
    req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    resp = probe.call(SetParameters, f"{node}/set_parameters", req)
    assert all(r.successful for r in resp.results), [r.reason for r in resp.results]


def test_sim_robot_reset_step_stamps_and_bad_commands(tmp_path: Path) -> None:
    params = {"task": "lift", "image_size": 64, "cameras": ["agentview", "wrist"], "seed": 5}
    with RosProbe(DOMAIN) as probe, start_node("wmpo_ros.sim_robot_node", params, DOMAIN, tmp_path, name="sim") as sim:
        states = probe.subscribe(String, "/sim/state", COMMAND_QOS)
        images = probe.subscribe(Image, "camera/agentview/image_raw", IMAGE_QOS)
        wrist = probe.subscribe(Image, "camera/wrist/image_raw", IMAGE_QOS)
        infos = probe.subscribe(CameraInfo, "camera/agentview/camera_info", IMAGE_QOS)
        joints = probe.subscribe(JointState, "joint_states", SENSOR_QOS)
        success = probe.subscribe(Bool, "wmpo/success", COMMAND_QOS)
        instruction = probe.subscribe(String, "wmpo/instruction", LATCHED_QOS)
        cmd = probe.publisher(JointTrajectory, "sim/arm_command", COMMAND_QOS)
        probe.wait_for(lambda: "simulated lift ready" in sim.output(), 120, "simulator ready", sim)
        probe.wait_for_subscribers(cmd, 1, proc=sim)
        # The latched instruction of the start-up reset reaches a late subscriber.
        probe.wait_for(lambda: len(instruction) >= 1, 10, "latched instruction", sim)
        assert instruction.last().data == "lift the red cube"

        def reset() -> dict:
            resp = probe.call(Trigger, "/sim/reset")
            assert resp.success, resp.message
            return json.loads(resp.message)

        # Seed from the parameter, then incremented for the next reset.
        set_params(probe, "/sim", seed=11)
        n0 = len(states)
        info = reset()
        assert info["seed"] == 11 and info["max_steps"] > 0
        probe.wait_for(lambda: len(states) > n0 and json.loads(states.last().data)["seed"] == 11, 10, "reset state", sim)
        first = json.loads(states.last().data)
        assert first["step"] == 0 and first["task"] == "lift" and "cube_pos" in first["state"]
        got = probe.call(GetParameters, "/sim/get_parameters", GetParameters.Request(names=["seed"]))
        assert got.values[0].integer_value == 12

        # The frame sent over DDS is the scene the simulator renders for that seed (a GL context
        # used from another thread once published noise here while the states were right).
        probe.wait_for(lambda: any(stamp_to_ns(m.header.stamp) == first["stamp_ns"] for m in images), 10,
                       "the reset's agentview frame", sim)
        sent = next(image_to_numpy(m) for m in images if stamp_to_ns(m.header.stamp) == first["stamp_ns"])
        from wmpo_core.sim import make_env

        env = make_env("lift", cameras=("agentview", "wrist"), image_size=64)
        try:
            direct = env.reset(seed=11).images["agentview"]
        finally:
            env.close()
        diff = np.abs(sent.astype(np.int16) - direct.astype(np.int16)).mean()
        assert diff < 2.0, f"agentview frame over DDS differs from the simulator's render by {diff:.1f} grey levels"

        # One simulator step per command, each observation stamped once, everywhere.
        n_img, n_state = len(images), len(states)
        for k in range(3):
            cmd.publish(chunk_to_trajectory(np.array([[0.0, 0.0, 0.02, 0.0, 0.0, 0.0, -1.0]]), probe.now_msg(), 0.1))
            probe.wait_for(lambda k=k: len(states) >= n_state + k + 1, 20, f"step {k + 1}", sim)
        time.sleep(0.3)
        new_states = [json.loads(m.data) for m in states[n_state:]]
        assert [s["step"] for s in new_states] == [1, 2, 3]
        assert new_states[-1]["eef_pos"][2] > first["eef_pos"][2] + 0.005  # it moved up (the controller lags)
        image_stamps = [stamp_to_ns(m.header.stamp) for m in images[n_img:]]
        assert image_stamps == [s["stamp_ns"] for s in new_states]
        assert set(image_stamps) <= {stamp_to_ns(m.header.stamp) for m in wrist}
        assert set(image_stamps) <= {stamp_to_ns(m.header.stamp) for m in joints}
        assert set(image_stamps) <= {stamp_to_ns(m.header.stamp) for m in infos}
        assert image_to_numpy(images.last()).shape == (64, 64, 3) and infos.last().width == 64
        assert len(joints.last().name) == len(joints.last().position) == 9
        assert len(success) >= 4 and success.last().data is False

        # NaN and malformed commands are ignored with a warning; the node keeps stepping.
        bad = chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1)
        bad.points[0].positions[2] = math.nan
        cmd.publish(bad)
        wrong = chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1)
        wrong.joint_names = ["a"] * 7
        cmd.publish(wrong)
        probe.wait_for(lambda: "ignored arm command" in sim.output(), 10, "warning about the bad command", sim)
        time.sleep(0.5)
        assert json.loads(states.last().data)["step"] == 3 and sim.alive()
        cmd.publish(chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1))
        probe.wait_for(lambda: json.loads(states.last().data)["step"] == 4, 20, "step after bad commands", sim)

        # Paused: commands are ignored until the next reset.
        set_params(probe, "/sim", paused=True)
        cmd.publish(chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1))
        time.sleep(0.5)
        assert json.loads(states.last().data)["step"] == 4

        # Same seed, same start state.
        set_params(probe, "/sim", seed=11)
        reset()
        probe.wait_for(lambda: json.loads(states.last().data)["step"] == 0, 10, "second reset", sim)
        again = json.loads(states.last().data)
        assert np.allclose(again["state"]["cube_pos"], first["state"]["cube_pos"])
        cmd.publish(chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1))
        probe.wait_for(lambda: json.loads(states.last().data)["step"] == 1, 20, "step after reset unpauses", sim)

        # ~/pause freezes the scene between two steps and says how far the episode got.
        resp = probe.call(Trigger, "/sim/pause")
        assert resp.success and json.loads(resp.message) == {"seed": 11, "step": 1, "observations": 2}
        cmd.publish(chunk_to_trajectory(np.zeros((1, 7)), probe.now_msg(), 0.1))
        time.sleep(0.5)
        assert json.loads(states.last().data)["step"] == 1
    assert sim.returncode == 0, sim.output()[-3000:]
