"""arm_node over real DDS: a separate process, the test publishes chunks and the simulator
state and reads `wmpo/applied_action`, `sim/arm_command` and /diagnostics."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import RosProbe, start_node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    ACTION_CHUNK_TOPIC,
    APPLIED_ACTION_TOPIC,
    COMMAND_QOS,
    DIAGNOSTICS_QOS,
    SIM_ARM_COMMAND_TOPIC,
    SIM_STATE_TOPIC,
    chunk_to_trajectory,
    diagnostic_values,
    ns_to_stamp,
    stamp_to_ns,
    trajectory_to_chunk,
)

pytestmark = pytest.mark.ros

RATE = 20.0
P_NS = int(1e9 / RATE)
BOX_MIN, BOX_MAX = (-0.3, -0.3, 0.8), (0.3, 0.3, 1.3)
EEF = [0.28, 0.0, 1.0]
BASE_PARAMS = {"control_rate_hz": RATE, "workspace_min": list(BOX_MIN), "workspace_max": list(BOX_MAX),
               "max_translation_per_step": 0.05, "max_rotation_per_step": 0.5, "watchdog_periods": 12,
               "max_axis_translation_per_step": 1.0, "max_axis_rotation_per_step": 1.0}


class ArmRig:
    """The arm node process plus a probe that feeds it the simulator state."""

    def __init__(self, domain_id: int, tmp_path, params: dict) -> None:
        self.probe = RosProbe(domain_id)
        self.applied = self.probe.subscribe(JointTrajectory, APPLIED_ACTION_TOPIC, COMMAND_QOS)
        self.commands = self.probe.subscribe(JointTrajectory, SIM_ARM_COMMAND_TOPIC, COMMAND_QOS)
        self.diag = self.probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.chunk_pub = self.probe.publisher(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        state_pub = self.probe.publisher(String, SIM_STATE_TOPIC, COMMAND_QOS)
        state = json.dumps({"eef_pos": EEF, "eef_quat": [0, 0, 0, 1], "joint_names": [], "joint_positions": []})
        self.probe.node.create_timer(0.1, lambda: state_pub.publish(String(data=state)))
        self.proc = start_node("wmpo_ros.arm_node", {**BASE_PARAMS, **params}, domain_id, tmp_path)
        self.probe.wait_for_subscribers(self.chunk_pub, 1, 30, self.proc)
        self.probe.wait_for(lambda: len(self.applied) >= 3, 20, "applied actions", self.proc)

    def now_ns(self) -> int:
        return self.probe.node.get_clock().now().nanoseconds

    def send(self, chunk: np.ndarray, stamp_ns: int | None = None) -> int:
        stamp_ns = self.now_ns() if stamp_ns is None else stamp_ns
        self.chunk_pub.publish(chunk_to_trajectory(chunk, ns_to_stamp(stamp_ns), 1.0 / RATE))
        return stamp_ns

    def applied_after(self, t_ns: int) -> list[tuple[int, np.ndarray]]:
        return [(stamp_to_ns(m.header.stamp), trajectory_to_chunk(m, allow_nonfinite=True)[0])
                for m in list(self.applied) if stamp_to_ns(m.header.stamp) > t_ns]

    def last_diag(self) -> dict[str, str]:
        for arr in reversed(list(self.diag)):
            for status in arr.status:
                if status.name.startswith("arm_node"):
                    return {"level": status.level, "message": status.message, **diagnostic_values(status)}
        return {}

    def close(self) -> None:
        rc = self.proc.stop()
        self.probe.close()
        assert rc == 0, f"arm_node exit code {rc}:\n{self.proc.output()[-3000:]}"


@pytest.fixture
def rig_factory(tmp_path):
    rigs = []

    def make(domain_id: int, **params) -> ArmRig:
        rigs.append(ArmRig(domain_id, tmp_path, params))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def _const_chunk(step: list[float], k: int = 8) -> np.ndarray:
    return np.tile(np.asarray(step, dtype=np.float64), (k, 1))


def _all_finite(msgs: list[JointTrajectory]) -> bool:
    return all(np.all(np.isfinite(trajectory_to_chunk(m, allow_nonfinite=True))) for m in msgs)


def test_out_of_workspace_and_too_fast_chunks_are_clamped(rig_factory):
    rig = rig_factory(10)
    # +x by 4 cm from x = 0.28 would leave the box (x <= 0.30): shortened to 2 cm
    t = rig.send(_const_chunk([0.04, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    rig.probe.wait_for(lambda: any(a[0] > 0 for _, a in rig.applied_after(t)), 10, "a moving step", rig.proc)
    moving = [a for _, a in rig.applied_after(t) if a[0] > 0]
    np.testing.assert_allclose(moving[0][:3], [0.02, 0.0, 0.0], atol=1e-9)
    assert all(EEF[0] + a[0] <= BOX_MAX[0] + 1e-9 for _, a in rig.applied_after(t))
    # too fast: 20 cm and 1.2 rad per step, clamped to 5 cm and 0.5 rad, direction kept
    t = rig.send(_const_chunk([0.0, -0.2, 0.0, 0.0, 0.0, 1.2, 1.0]))
    rig.probe.wait_for(lambda: any(a[1] < 0 for _, a in rig.applied_after(t)), 10, "a fast step", rig.proc)
    fast = [a for _, a in rig.applied_after(t) if a[1] < 0][0]
    np.testing.assert_allclose(fast[:6], [0.0, -0.05, 0.0, 0.0, 0.0, 0.5], atol=1e-9)
    # the simulator received exactly what was applied
    rig.probe.wait_for(lambda: any(np.allclose(trajectory_to_chunk(m)[0], fast) for m in rig.commands), 5,
                       "the clamped step on sim/arm_command", rig.proc)
    for m in list(rig.applied):
        a = trajectory_to_chunk(m)[0]
        assert np.linalg.norm(a[:3]) <= 0.05 + 1e-9 and np.linalg.norm(a[3:6]) <= 0.5 + 1e-9
    rig.probe.wait_for(lambda: int(rig.last_diag().get("clamps", "0")) >= 2, 5, "clamps in diagnostics", rig.proc)


def test_nan_chunk_is_rejected_and_the_previous_chunk_continues(rig_factory):
    rig = rig_factory(11, chunk_size=0)
    good = np.zeros((40, 7))
    good[:, 2] = 0.001 * (np.arange(40) + 1)  # dz encodes the step index
    good[:, 6] = 1.0
    t_good = rig.send(good)
    rig.probe.wait_for(lambda: len([a for _, a in rig.applied_after(t_good) if a[2] > 0]) >= 2, 10, "good steps",
                       rig.proc)
    bad = _const_chunk([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], k=40)
    bad[5, 0] = float("nan")
    t_bad = rig.send(bad)
    rig.probe.wait_for(lambda: len(rig.applied_after(t_bad)) >= 6, 10, "steps after the NaN chunk", rig.proc)
    after = [a for _, a in rig.applied_after(t_bad)]
    assert all(a[0] == 0.0 for a in after), "a step of the NaN chunk was executed"
    dz = [a[2] for a in after if a[2] > 0]
    assert len(dz) >= 4 and all(b > a for a, b in zip(dz, dz[1:], strict=False)), dz  # the good chunk goes on
    assert _all_finite(list(rig.applied)) and _all_finite(list(rig.commands))
    rig.probe.wait_for(lambda: int(rig.last_diag().get("rejected_chunks", "0")) >= 1, 5, "rejection in diagnostics",
                       rig.proc)
    assert "non-finite" in rig.last_diag()["last_rejection"]
    # a chunk planned for another control rate is refused too (delta steps cannot be resampled)
    slow = _const_chunk([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], k=40)
    rig.chunk_pub.publish(chunk_to_trajectory(slow, ns_to_stamp(rig.now_ns()), 2.0 / RATE))
    rig.probe.wait_for(lambda: "period" in rig.last_diag().get("last_rejection", ""), 5, "period rejection", rig.proc)
    assert all(a[0] == 0.0 for _, a in rig.applied_after(t_bad))
    assert rig.proc.alive()


def test_watchdog_holds_after_n_silent_periods(rig_factory):
    rig = rig_factory(12, chunk_size=0, watchdog_periods=4)
    t = rig.send(_const_chunk([-0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], k=60))
    rig.probe.wait_for(lambda: len(rig.applied_after(t + 15 * P_NS)) >= 5, 15, "ticks after the watchdog", rig.proc)
    # Counts and order only, true at any load: the 60-step chunk moves the arm for the ticks within
    # 4 periods of its arrival (at most 5 ticks fit), then every tick holds, the gripper kept closed.
    after = [a for _, a in rig.applied_after(t)]
    moves = next((i for i, a in enumerate(after) if a[0] >= 0), len(after))
    assert 1 <= moves <= 5, f"{moves} steps executed after the chunk stopped coming"
    held = after[moves:]
    assert len(held) >= 5 and all(np.all(a[:6] == 0.0) and a[6] == 1.0 for a in held), held
    rig.probe.wait_for(lambda: rig.last_diag().get("hold_reason") == "watchdog", 5, "watchdog in diagnostics", rig.proc)


def test_estop_holds_until_release(rig_factory):
    rig = rig_factory(13)
    feeding = {"on": True}
    rig.probe.node.create_timer(0.15, lambda: feeding["on"] and rig.send(_const_chunk([0.0, 0.01, 0, 0, 0, 0, 1.0])))
    rig.probe.wait_for(lambda: any(a[1] > 0 for _, a in rig.applied_after(0)), 10, "moving steps", rig.proc)
    assert rig.probe.call(Trigger, "/arm_node/estop").success
    t_stop = rig.now_ns()
    time.sleep(0.6)
    held = rig.applied_after(t_stop)
    assert len(held) >= 5 and all(np.all(a[:6] == 0.0) for _, a in held)
    rig.probe.wait_for(lambda: rig.last_diag().get("level") == b"\x02", 5, "e-stop ERROR in diagnostics", rig.proc)
    assert rig.probe.call(Trigger, "/arm_node/release").success
    t_rel = rig.now_ns()
    rig.probe.wait_for(lambda: any(a[1] > 0 for _, a in rig.applied_after(t_rel)), 10, "motion after release", rig.proc)
    feeding["on"] = False


def test_late_chunk_starts_at_the_step_of_its_delay(rig_factory):
    rig = rig_factory(14)
    chunk = np.zeros((8, 7))
    chunk[:, 1] = 0.001 * (np.arange(8) + 1)  # dy = (k + 1) mm encodes step k
    stamp = rig.now_ns() - int(2.5 * P_NS)  # the observation is 2.5 periods old when sent
    rig.send(chunk, stamp)
    rig.probe.wait_for(lambda: any(a[1] > 0 for _, a in rig.applied_after(stamp)), 10, "steps of the late chunk",
                       rig.proc)
    served = [(s, int(round(a[1] / 0.001)) - 1) for s, a in rig.applied_after(stamp) if a[1] > 0]
    first_stamp, first_k = served[0]
    assert first_k >= 2, served
    # the step served is the one due at the tick: floor(elapsed / period), the tick read its clock just before stamping
    assert math.floor((first_stamp - 5_000_000 - stamp) / P_NS) <= first_k <= math.floor((first_stamp - stamp) / P_NS)
    ks = [k for _, k in served]
    assert ks == sorted(set(ks)), ks  # never repeated, never backwards
