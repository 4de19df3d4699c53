"""The robot description matches the simulator: xacro and expanded URDF agree, joint limits
equal the MJCF ranges, and pinocchio forward kinematics of the URDF reproduce the
end-effector (OSC grip site) and camera poses of robosuite's Panda in a real MuJoCo scene."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pin = pytest.importorskip("pinocchio", reason="pinocchio missing: pip install -e '.[kinematics]'")

ROOT = Path(__file__).resolve().parents[1]
XACRO = ROOT / "urdf" / "panda.urdf.xacro"
URDF = ROOT / "urdf" / "panda.urdf"
N_CONFIGS = 25
POSITION_TOL_M = 1e-12
ORIENTATION_TOL_DEG = 1e-9


def _canonical(elem: ET.Element) -> tuple:
    return (elem.tag, sorted(elem.attrib.items()), [_canonical(c) for c in elem])


def test_expanded_urdf_is_the_xacro_output() -> None:
    xacro = pytest.importorskip("xacro", reason="xacro missing: pip install xacro")
    expanded = xacro.process_file(str(XACRO)).toxml()
    assert _canonical(ET.fromstring(expanded)) == _canonical(ET.parse(URDF).getroot()), (
        "urdf/panda.urdf is stale: regenerate with `xacro urdf/panda.urdf.xacro > urdf/panda.urdf`"
    )


def test_xacro_arguments_move_the_mounts() -> None:
    xacro = pytest.importorskip("xacro", reason="xacro missing: pip install xacro")
    doc = xacro.process_file(str(XACRO), mappings={"prefix": "fr_", "base_xyz": "0 0 0", "external_camera": "front"})
    root = ET.fromstring(doc.toxml())
    links = {link.get("name") for link in root.iter("link")}
    assert {"fr_link7", "fr_grip_site", "front_camera_optical_frame", "wrist_camera_link"} <= links
    base = next(j for j in root.iter("joint") if j.get("name") == "fr_base_joint")
    assert base.find("origin").get("xyz") == "0 0 0"


def _mjcf_ranges() -> dict[str, tuple[float, float]]:
    import robosuite

    assets = Path(robosuite.__file__).parent / "models" / "assets"
    ranges = {}
    for xml in (assets / "robots" / "panda" / "robot.xml", assets / "grippers" / "panda_gripper.xml"):
        for joint in ET.parse(xml).getroot().iter("joint"):
            lo, hi = (float(v) for v in joint.get("range").split())
            ranges[joint.get("name")] = (lo, hi)
    return ranges


def test_joint_limits_and_axes_equal_the_mjcf() -> None:
    pytest.importorskip("robosuite", reason="robosuite missing: pip install -e '.[sim]'")
    ranges = _mjcf_ranges()
    urdf_joints = {j.get("name"): j for j in ET.parse(URDF).getroot().iter("joint") if j.get("type") != "fixed"}
    assert len(urdf_joints) == len(ranges) == 9
    for mj_name, (lo, hi) in ranges.items():
        joint = urdf_joints[f"panda_{mj_name}"]
        limit = joint.find("limit")
        assert (float(limit.get("lower")), float(limit.get("upper"))) == (lo, hi), mj_name
        assert float(limit.get("velocity")) > 0 and float(limit.get("effort")) > 0, mj_name


@pytest.fixture(scope="module")
def lift_sim():
    suite = pytest.importorskip("robosuite", reason="robosuite missing: pip install -e '.[sim]'")
    env = suite.make(
        "Lift", robots="Panda", has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False
    )
    env.reset()
    yield env.sim
    env.close()


@pytest.mark.sim
def test_fk_matches_simulator_end_effector_and_cameras(lift_sim) -> None:
    sim = lift_sim
    model = pin.buildModelFromUrdf(str(URDF))
    data = model.createData()
    rng = np.random.default_rng(7)
    arm = [sim.model.get_joint_qpos_addr(f"robot0_joint{i}") for i in range(1, 8)]
    fingers = [sim.model.get_joint_qpos_addr(f"gripper0_right_finger_joint{i}") for i in (1, 2)]
    site = sim.model.site_name2id("gripper0_right_grip_site")
    base_body = sim.model.body_name2id("robot0_base")
    wrist_cam = sim.model.camera_name2id("robot0_eye_in_hand")
    agent_cam = sim.model.camera_name2id("agentview")
    frame = {name: model.getFrameId(name) for name in
             ("panda_base", "panda_grip_site", "panda_leftfinger", "wrist_camera_link", "agentview_camera_link")}
    finger_body = sim.model.body_name2id("gripper0_right_leftfinger")

    def pose_error(oMf, pos, mat) -> tuple[float, float]:
        rot_err = np.degrees(np.linalg.norm(pin.log3(oMf.rotation.T @ np.asarray(mat).reshape(3, 3))))
        return float(np.linalg.norm(oMf.translation - pos)), float(rot_err)

    worst = np.zeros(2)
    for _ in range(N_CONFIGS):
        q = rng.uniform(model.lowerPositionLimit, model.upperPositionLimit)
        q[8] = -q[7]  # the simulator drives the fingers symmetrically (URDF mimic)
        sim.data.qpos[arm] = q[:7]
        sim.data.qpos[fingers] = q[7:9]
        sim.forward()
        pin.framesForwardKinematics(model, data, q)
        checks = [
            pose_error(data.oMf[frame["panda_grip_site"]], sim.data.site_xpos[site], sim.data.site_xmat[site]),
            pose_error(data.oMf[frame["panda_base"]], sim.data.body_xpos[base_body], sim.data.body_xmat[base_body]),
            pose_error(data.oMf[frame["wrist_camera_link"]], sim.data.cam_xpos[wrist_cam], sim.data.cam_xmat[wrist_cam]),
            pose_error(data.oMf[frame["agentview_camera_link"]], sim.data.cam_xpos[agent_cam], sim.data.cam_xmat[agent_cam]),
            pose_error(data.oMf[frame["panda_leftfinger"]], sim.data.body_xpos[finger_body], sim.data.body_xmat[finger_body]),
        ]
        for pos_err, rot_err in checks:
            worst = np.maximum(worst, (pos_err, rot_err))
    # Both sides compose the same MJCF numbers in double precision: measured 9.3e-16 m and 7.1e-14
    # degrees. The bounds leave room for a different BLAS or summation order, not for a wrong digit
    # (a joint origin off by 1 um, or an axis off by 1e-6 rad, fails).
    assert worst[0] < POSITION_TOL_M, f"worst position error {worst[0]:.3g} m"
    assert worst[1] < ORIENTATION_TOL_DEG, f"worst orientation error {worst[1]:.3g} deg"
