"""policy_node over real DDS with the scripted backend: chunks stamped with the observation
stamp, replanning, the latched version, and bad input that never kills the node."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("scipy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import RosProbe, start_node  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    ACTION_CHUNK_TOPIC,
    COMMAND_QOS,
    DIAGNOSTICS_QOS,
    ERROR,
    IMAGE_QOS,
    LATCHED_QOS,
    OK,
    POLICY_VERSION_TOPIC,
    SIM_STATE_TOPIC,
    WARN,
    image_topic,
    ns_to_stamp,
    numpy_to_image,
    stamp_to_ns,
    trajectory_to_chunk,
)
from wmpo_ros.sim_robot_node import observation_state_json  # noqa: E402

from wmpo_core.control import ACTION_NAMES  # noqa: E402
from wmpo_core.sim.demonstrators import make_demonstrator  # noqa: E402
from wmpo_core.sim.observation import Observation  # noqa: E402

pytestmark = pytest.mark.ros

P_NS = 50_000_000


def _lift_obs(step: int, eef=(-0.1, 0.02, 1.0)) -> Observation:
    """A plausible Lift observation: hand pointing down above the table, cube on the table."""
    return Observation(
        images={}, joint_names=[f"robot0_joint{i}" for i in range(1, 8)] + ["finger_l", "finger_r"],
        joint_positions=np.zeros(9), eef_pos=np.asarray(eef, dtype=float), eef_quat=np.array([1.0, 0.0, 0.0, 0.0]),
        gripper_qpos=np.array([0.02, -0.02]),
        state={"cube_pos": np.array([0.01, -0.01, 0.83]), "cube_quat": np.array([0.0, 0.0, 0.0, 1.0])},
        success=False, step=step)


class PolicyRig:
    def __init__(self, domain_id: int, tmp_path, params: dict) -> None:
        self.probe = RosProbe(domain_id)
        self.chunks = self.probe.subscribe(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        self.latency = self.probe.subscribe(Float64, "/policy_node/latency_ms", COMMAND_QOS)
        self.diag = self.probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.img_pubs = {c: self.probe.publisher(type(numpy_to_image(np.zeros((2, 2, 3), np.uint8))), image_topic(c),
                                                 IMAGE_QOS) for c in ("agentview", "wrist")}
        self.state_pub = self.probe.publisher(String, SIM_STATE_TOPIC, COMMAND_QOS)
        self.proc = start_node("wmpo_ros.policy_node", params, domain_id, tmp_path)
        self.probe.wait_for_subscribers(self.img_pubs["agentview"], 1, 30, self.proc)
        self.probe.wait_for_subscribers(self.state_pub, 1, 30, self.proc)
        self.probe.wait_for_node_ready("policy_node", 30, self.proc)

    def observe(self, obs: Observation, stamp_ns: int, sizes: dict[str, int]) -> None:
        """Publish what the sim robot node publishes for one observation: state, then images, one stamp."""
        self.state_pub.publish(String(data=observation_state_json(obs, stamp_ns, obs.step, 7, "lift")))
        for cam, size in sizes.items():
            img = np.full((size, size, 3), 128, np.uint8)
            self.img_pubs[cam].publish(numpy_to_image(img, stamp=ns_to_stamp(stamp_ns), frame_id=cam))

    def status(self):
        for arr in reversed(list(self.diag)):
            for s in arr.status:
                if s.name.startswith("policy_node"):
                    return s
        return None

    def wait_status(self, level: bytes, text: str, timeout: float = 10.0) -> None:
        self.probe.wait_for(lambda: (s := self.status()) is not None and s.level == level and text in s.message,
                            timeout, f"diagnostics {level!r} mentioning {text!r}", self.proc)

    def close(self) -> int:
        rc = self.proc.stop()
        self.probe.close()
        return rc


def test_scripted_policy_publishes_chunks_stamped_with_the_observation(tmp_path):
    rig = PolicyRig(30, tmp_path, {"backend": "scripted", "cameras": ["agentview"], "control_rate_hz": 20.0})
    try:
        t0 = rig.probe.node.get_clock().now().nanoseconds
        stamps = [t0 + i * P_NS for i in range(17)]
        for i, s in enumerate(stamps):  # paced like the simulator: one observation per control period
            rig.observe(_lift_obs(i, eef=(-0.1 + 0.002 * i, 0.02, 1.0)), s, {"agentview": 64})
            time.sleep(P_NS / 1e9)
        rig.probe.wait_for(lambda: len(rig.chunks) >= 3, 15, "three chunks", rig.proc)
        time.sleep(0.3)
        got = [stamp_to_ns(m.header.stamp) for m in rig.chunks]
        assert got[0] == stamps[0]
        assert set(got) <= set(stamps), "a chunk carries a stamp that is no observation's"
        gaps = np.diff(got) / P_NS
        assert len(got) == 3 and np.all(gaps >= 7.5) and np.all(gaps <= 10), gaps  # replans every 8 steps

        first = rig.chunks[0]
        assert list(first.joint_names) == list(ACTION_NAMES) and len(first.points) == 8
        demo = make_demonstrator("lift", noise=0.0, seed=0)
        demo.reset(seed=7)
        expected = demo.plan_chunk(_lift_obs(0, eef=(-0.1, 0.02, 1.0)), 8)
        np.testing.assert_allclose(trajectory_to_chunk(first), expected, atol=1e-12)
        assert first.points[1].time_from_start.nanosec == P_NS

        assert len(rig.latency) >= 3 and all(0 <= m.data < 2000 for m in rig.latency)
        # the version is latched: a subscriber that joins late still gets it
        version = rig.probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
        rig.probe.wait_for(lambda: len(version) >= 1, 10, "latched policy version", rig.proc)
        assert version[0].data.startswith("scripted:")
        rig.wait_status(OK, "publishing")
    finally:
        assert rig.close() == 0, rig.proc.output()[-3000:]


def test_bad_input_never_kills_the_policy_node(tmp_path):
    params = {"backend": "scripted", "cameras": ["agentview", "wrist"], "image_height": 64, "image_width": 64,
              "max_image_age_s": 0.5}
    rig = PolicyRig(31, tmp_path, params)
    try:
        rig.probe.wait_for_subscribers(rig.img_pubs["wrist"], 1, 30, rig.proc)
        now = rig.probe.node.get_clock().now().nanoseconds
        # the wrist camera is missing
        rig.observe(_lift_obs(0), now, {"agentview": 64})
        rig.wait_status(WARN, "missing camera")
        # wrong image size
        rig.observe(_lift_obs(0), now + P_NS, {"agentview": 32, "wrist": 64})
        rig.wait_status(WARN, "32x32")
        # garbage on /sim/state, then a state the demonstrator turns into NaN
        rig.state_pub.publish(String(data="{not json"))
        bad = _lift_obs(0, eef=(float("nan"), 0.0, 1.0))
        rig.observe(bad, now + 2 * P_NS, {"agentview": 64, "wrist": 64})
        rig.probe.wait_for(lambda: (s := rig.status()) is not None and s.level in (WARN, ERROR)
                           and ("non-finite" in s.message or "eef_pos" in s.message or "cannot plan" in s.message),
                           10, "the NaN state reported", rig.proc)
        time.sleep(0.3)
        assert len(rig.chunks) == 0 and rig.proc.alive()
        # good input again: the node recovers
        rig.observe(_lift_obs(0), now + 3 * P_NS, {"agentview": 64, "wrist": 64})
        rig.probe.wait_for(lambda: len(rig.chunks) == 1, 10, "a chunk after recovery", rig.proc)
        assert stamp_to_ns(rig.chunks[0].header.stamp) == now + 3 * P_NS
        assert np.all(np.isfinite(trajectory_to_chunk(rig.chunks[0])))
        values = {kv.key: kv.value for kv in rig.status().values}
        assert int(values.get("bad_states", "0")) >= 1
    finally:
        assert rig.close() == 0, rig.proc.output()[-3000:]


def test_backend_swap_is_atomic_and_republishes_the_version():
    """swap_backend (the hook for ~/load_policy): the new version is latched, the old backend is closed."""
    from wmpo_ros.policy_backends.scripted import ScriptedPolicyBackend
    from wmpo_ros.policy_node import PolicyNode

    class Tracked(ScriptedPolicyBackend):
        closed = False

        def close(self) -> None:
            self.closed = True

    with RosProbe(33) as probe:
        node = PolicyNode(context=probe.context)
        try:
            probe.executor.add_node(node)
            versions = probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
            probe.wait_for(lambda: len(versions) >= 1, 10, "first version")
            assert versions[-1].data == "scripted:auto:noise=0:seed=0"
            first = Tracked({"task": "lift", "noise": 0.1, "seed": 1})
            node.swap_backend(first)
            second = Tracked({"task": "lift", "noise": 0.2, "seed": 2})
            old = node.swap_backend(second)
            assert old is first and first.closed and not second.closed and node.backend is second
            probe.wait_for(lambda: versions[-1].data == "scripted:lift:noise=0.2:seed=2", 10, "swapped version")
            late = probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
            probe.wait_for(lambda: len(late) >= 1, 10, "latched version for a late subscriber")
            assert late[-1].data == "scripted:lift:noise=0.2:seed=2"
        finally:
            probe.executor.remove_node(node)
            node.close()
            node.destroy_node()
