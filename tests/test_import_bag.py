"""`wmpo import-bag`: a foreign rosbag2 (compressed images on its own topic, a pose topic, no metadata.yaml)
becomes episodes the rest of the stack trains on; actions reproduce the recorded motion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from wmpo_core.cli import main as wmpo
from wmpo_core.data import topics as T
from wmpo_core.data.bag import load_episode, read_metadata

CAM_TOPIC = "/rs/color/image_raw/compressed"
POSE_TOPIC = "/franka/ee_pose"
GRIPPER_TOPIC = "/franka/gripper/joint_states"
SUCCESS_TOPIC = "/task_success"
START_NS = 1_750_000_000_000_000_000
DURATION_S = 3.0


def true_position(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    return np.stack([0.45 + 0.08 * np.sin(1.3 * t), -0.05 + 0.04 * t, 0.30 + 0.03 * t**2], axis=-1)


def true_rotation(t: np.ndarray) -> Rotation:
    t = np.asarray(t, dtype=np.float64)
    base = Rotation.from_euler("xyz", [np.pi, 0.0, 0.3])  # gripper pointing down
    return Rotation.from_rotvec(np.stack([0.2 * np.sin(t), 0.15 * t, -0.25 * t], axis=-1)) * base


def _header(store, ns: int, frame: str):
    stamp = store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
    return store.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)


def write_foreign_bag(path: Path, *, storage=StoragePlugin.MCAP, keep_metadata: bool = False,
                      backwards_at: int | None = None, pause_s: float = 0.0, noise: bool = False) -> Path:
    """What `ros2 bag record` gives on a Franka + RealSense: JPEG images, an ee pose, finger joints, success.

    ``pause_s`` inserts a pause of every topic after the first half (two episodes in one bag)."""
    store = T.typestore()
    ty = store.types
    writer = Writer(path, version=9, storage_plugin=storage)
    writer.open()
    conns = {
        CAM_TOPIC: writer.add_connection(CAM_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store),
        POSE_TOPIC: writer.add_connection(POSE_TOPIC, "geometry_msgs/msg/PoseStamped", typestore=store),
        GRIPPER_TOPIC: writer.add_connection(GRIPPER_TOPIC, "sensor_msgs/msg/JointState", typestore=store),
        SUCCESS_TOPIC: writer.add_connection(SUCCESS_TOPIC, "std_msgs/msg/Bool", typestore=store),
        "/tf_noise": writer.add_connection("/tf_noise", "std_msgs/msg/String", typestore=store),
    }
    events: list[tuple[int, str, object]] = []

    def at(t: float) -> int:
        return START_NS + round((t + (pause_s if pause_s and t >= DURATION_S / 2 else 0.0)) * 1e9)

    for k in range(int(DURATION_S * 30)):  # 30 Hz camera, 120 x 160 JPEG with a moving square
        t = k / 30
        img = np.full((120, 160, 3), 40, np.uint8)
        x = int(20 + 100 * t / DURATION_S)
        img[40:80, x:x + 30] = (200, 60, 30)
        if noise:  # large JPEGs: the bag spans several 1 MiB chunks
            img = np.random.default_rng(k).integers(0, 256, img.shape, dtype=np.uint8)
        ok, jpg = cv2.imencode(".jpg", img[..., ::-1])
        assert ok
        msg = ty["sensor_msgs/msg/CompressedImage"](header=_header(store, at(t), "camera_color_optical_frame"),
                                                     format="rgb8; jpeg compressed bgr8",
                                                     data=np.frombuffer(jpg.tobytes(), np.uint8))
        events.append((at(t) + 2_000_000, CAM_TOPIC, msg))
    for k in range(int(DURATION_S * 100) + 1):  # 100 Hz pose
        t = k / 100
        p, q = true_position(t), true_rotation(t).as_quat()  # xyzw
        stamp = at(t) - (50_000_000 if backwards_at == k else 0)
        pose = ty["geometry_msgs/msg/Pose"](position=ty["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                                            orientation=ty["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        events.append((at(t) + 1_000_000, POSE_TOPIC,
                       ty["geometry_msgs/msg/PoseStamped"](header=_header(store, stamp, "panda_link0"), pose=pose)))
    for k in range(int(DURATION_S * 50)):  # 50 Hz fingers: open, closing at 1.2 s
        t = k / 50
        width = 0.04 if t < 1.2 else 0.012
        events.append((at(t) + 1_000_000, GRIPPER_TOPIC,
                       T.joint_state_msg(at(t), ["panda_finger_joint1", "panda_finger_joint2"], [width, width])))
    for k in range(int(DURATION_S) + 1):
        events.append((at(min(k, DURATION_S)), SUCCESS_TOPIC, T.bool_msg(k >= DURATION_S)))
    events.append((at(0.5), "/tf_noise", T.string_msg("ignored")))
    for log_ns, topic, msg in sorted(events, key=lambda e: e[0]):
        writer.write(conns[topic], log_ns, T.serialize(msg, conns[topic].msgtype))
    writer.close()
    if not keep_metadata:
        (path / "metadata.yaml").unlink()  # a bag copied without it, or from a recorder that never wrote it
    return path


MAP = {
    "control_hz": 10,
    "image_size": [64, 64],
    "task": "lift",
    "instruction": "lift the red cube",
    "robot_id": "franka-lab-1",
    "cameras": {"agentview": {"topic": CAM_TOPIC}},
    "actions": {"pose_topic": POSE_TOPIC},
    "gripper": {"topic": GRIPPER_TOPIC, "joint": "panda_finger_joint1", "closed_below": 0.03},
    "split": {"by": "bag"},
    "success": {"topic": SUCCESS_TOPIC},
    "proprio": {"topic": GRIPPER_TOPIC},
}


def write_map(path: Path, **changes) -> Path:
    data = json.loads(json.dumps(MAP))
    data.update(changes)
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_imported_actions_reproduce_the_recorded_pose_path_and_the_stack_trains_on_them(tmp_path, capsys):
    src = write_foreign_bag(tmp_path / "lab_run_7")
    before = digest(src)
    out = tmp_path / "episodes"
    assert wmpo(["import-bag", str(src), "--map", str(write_map(tmp_path / "map.yaml")), "--out", str(out)]) == 0
    assert digest(src) == before  # the source bag is only read
    assert "lab_run_7: " in capsys.readouterr().out

    ep = load_episode(out / "lab_run_7")
    meta = read_metadata(out / "lab_run_7")
    assert meta.instruction == "lift the red cube" and meta.robot_id == "franka-lab-1" and meta.success is True
    assert meta.control_hz == 10 and meta.complete
    assert ep.frames["agentview"].shape[1:] == (64, 64, 3)
    n = ep.num_steps
    assert n >= 28, n  # 3 s at 10 Hz, less the first camera frame's offset

    # Integrate the actions from the pose at the first step: every step lands on the pose topic's path.
    t = (np.append(ep.frame_stamps_ns["agentview"], ep.frame_stamps_ns["agentview"][-1] + 10**8) - START_NS) / 1e9
    position = true_position(t[0]) + np.concatenate([[np.zeros(3)], np.cumsum(ep.actions[:, :3], axis=0)])
    position_error = np.linalg.norm(position - true_position(t), axis=1)
    assert position_error.max() < 1e-3, position_error.max()
    rotation = [true_rotation(t[0])]
    for a in ep.actions:
        rotation.append(Rotation.from_rotvec(a[3:6]) * rotation[-1])  # exp(d) R: the arm's rule
    rotation_error = [(r * true_rotation(tk).inv()).magnitude() for r, tk in zip(rotation, t, strict=True)]
    assert max(rotation_error) < 1e-3, max(rotation_error)
    # Gripper: open (-1) until the fingers close at 1.2 s, closed (+1) after.
    assert set(ep.actions[:, 6].tolist()) == {-1.0, 1.0}
    assert np.all(ep.actions[t[1:] < 1.15, 6] == -1) and np.all(ep.actions[t[1:] > 1.25, 6] == 1)
    # Proprio: the finger joints, the newest state at or before each step.
    assert ep.joint_names == ("panda_finger_joint1", "panda_finger_joint2")
    assert np.allclose(ep.proprio[:, 0], np.where(t[:-1] < 1.2 - 1e-9, 0.04, 0.012))
    # The moving square is in the frames (JPEG decoded, resized), moving right.
    red = ep.frames["agentview"][..., 0].astype(int) - ep.frames["agentview"][..., 2].astype(int)
    columns = [float(np.argmax(r.max(axis=0))) for r in red]
    assert columns[-1] > columns[0] + 20

    # Behaviour cloning and the world model take the imported episodes as they are.
    policy_cfg = tmp_path / "policy.json"
    policy_cfg.write_text(json.dumps(dict(num_layers=1, vision_layers=1, hidden_size=64, vision_hidden_size=64,
                                          intermediate_size=128, vision_intermediate_size=128, text_vocab_size=320)))
    assert wmpo(["train-policy", "--episodes", str(out), "--out", str(tmp_path / "bc"), "--config", str(policy_cfg),
                 "--steps", "2", "--batch-size", "2", "--threads", "1", "--no-progress"]) == 0
    assert (tmp_path / "bc" / "final" / "model.safetensors").is_file() or list((tmp_path / "bc").rglob("model.safetensors"))
    wm_cfg = tmp_path / "wm.json"
    wm_cfg.write_text(json.dumps({
        "steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "image_size": 32, "num_inference_steps": 2,
        "vae_steps": 2, "vae_batch_size": 4, "tiny_vae": {"block_out_channels": [8, 8, 16]},
        "transformer": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                        "context_frames": 2, "chunk_size": 4}}))
    capsys.readouterr()
    assert wmpo(["train-world-model", "--episodes", str(out), "--out", str(tmp_path / "wm"),
                 "--config", str(wm_cfg)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["step"] == 2


def test_sqlite3_bag_with_metadata_split_by_gaps(tmp_path, capsys):
    src = write_foreign_bag(tmp_path / "two_tries", storage=StoragePlugin.SQLITE3, keep_metadata=True, pause_s=5.0)
    out = tmp_path / "episodes"
    bag_map = write_map(tmp_path / "map.yaml", split={"by": "gap", "gap_s": 1.0}, success=None,
                        gripper={"constant": -1})
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["two_tries_000", "two_tries_001"]
    for name in names:
        ep = load_episode(out / name)
        assert ep.num_steps >= 13 and ep.metadata.success is None and np.all(ep.actions[:, 6] == -1)
    # Nothing the user made is overwritten: a second import into the same folder is refused.
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(out)]) == 2
    assert "--into-existing" in capsys.readouterr().err
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(out), "--into-existing"]) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"cameras": {"agentview": {"topic": "/camera/color/image_raw"}}},
     "cameras.agentview.topic: topic /camera/color/image_raw is not in"),
    ({"actions": {"pose_topic": GRIPPER_TOPIC}},
     "actions.pose_topic: /franka/gripper/joint_states in {src} is sensor_msgs/msg/JointState, which is not supported"),
    ({"success": {"topic": "/tf_noise"}}, "success.topic: /tf_noise in {src} is std_msgs/msg/String"),
    ({"control_hz": -3}, "field 'control_hz' -3.0: expected a rate in Hz"),
    ({"split": {"by": "topic"}}, "split.by 'topic': expected 'bag' or 'gap'"),
    ({"gripper": {"topic": GRIPPER_TOPIC, "joint": "finger"}}, "no joint 'finger'"),
    ({"proprio": {"topic": GRIPPER_TOPIC, "joints": ["panda_joint1"]}}, "lacks joint(s) ['panda_joint1']"),
])
def test_map_errors_name_the_file_and_the_field(tmp_path, capsys, change, message):
    src = write_foreign_bag(tmp_path / "bag")
    bag_map = write_map(tmp_path / "map.yaml", **change)
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message.format(src=src) in err, err
    assert str(bag_map) in err or str(src) in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_timestamps_going_backwards_are_refused_by_topic_and_message(tmp_path, capsys):
    src = write_foreign_bag(tmp_path / "bag", backwards_at=120)
    assert wmpo(["import-bag", str(src), "--map", str(write_map(tmp_path / "map.yaml")),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{src}: {POSE_TOPIC} message 120: timestamp goes backwards" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_documented_franka_realsense_map_is_valid(tmp_path):
    from wmpo_core.data.import_bag import load_map

    text = (Path(__file__).parents[1] / "docs" / "real_robot.md").read_text()
    block = text.split("# franka_realsense.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "franka_realsense.yaml").write_text(block)
    bag_map = load_map(tmp_path / "franka_realsense.yaml")
    assert bag_map.cameras == {"agentview": "/camera/camera/color/image_raw/compressed",
                               "wrist": "/wrist_camera/camera/color/image_raw"}
    assert bag_map.gripper_joint == "panda_finger_joint1" and bag_map.split_by == "gap"
    assert bag_map.success_topic == "/operator/success" and bag_map.image_size == (64, 64)
    assert bag_map.proprio_topic == "/joint_states" and len(bag_map.proprio_joints or []) == 7


def test_a_bag_whose_recorder_was_killed_imports_its_complete_chunks(tmp_path, capsys):
    src = write_foreign_bag(tmp_path / "killed", noise=True)
    mcap = next(src.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.7)])  # no summary, no footer, a torn last chunk
    out = tmp_path / "episodes"
    assert wmpo(["import-bag", str(src), "--map", str(write_map(tmp_path / "map.yaml", success=None)),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    ep = load_episode(out / "killed")
    assert 5 <= ep.num_steps < 29, ep.num_steps  # what the complete chunks held
    t = (np.append(ep.frame_stamps_ns["agentview"], ep.frame_stamps_ns["agentview"][-1] + 10**8) - START_NS) / 1e9
    position = true_position(t[0]) + np.concatenate([[np.zeros(3)], np.cumsum(ep.actions[:, :3], axis=0)])
    assert np.linalg.norm(position - true_position(t), axis=1).max() < 1e-3


def test_a_source_that_fails_half_way_leaves_nothing_and_keeps_what_was_there(tmp_path, capsys):
    from wmpo_core.data.episodes import write_synthetic_episode

    src = write_foreign_bag(tmp_path / "two_tries", pause_s=5.0)
    out = tmp_path / "episodes"
    users = write_synthetic_episode(out, 4, episode_id="two_tries_001")  # the second episode's name is taken
    before = digest(users)
    bag_map = write_map(tmp_path / "map.yaml", split={"by": "gap", "gap_s": 1.0})
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(out), "--into-existing"]) == 2
    assert "two_tries_001: exists already" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["two_tries_001"]  # two_tries_000 was removed again
    assert digest(users) == before


def test_actions_from_joint_states_through_the_urdf_forward_kinematics(tmp_path):
    pytest.importorskip("pinocchio")  # the kinematics extra (installed by scripts/setup.sh)
    from wmpo_core.control.kinematics import DEFAULT_JOINT_NAMES, ArmKinematics

    arm = ArmKinematics()
    home = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8])

    def q(t: float) -> np.ndarray:
        return home + 0.25 * np.sin(np.array([0.8, 1.1, 0.6, 0.9, 1.3, 0.7, 1.0]) * t)

    store = T.typestore()
    src = tmp_path / "joints_only"
    writer = Writer(src, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    cam = writer.add_connection(CAM_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store)
    js = writer.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
    events = []
    for k in range(60):  # 2 s of 30 Hz PNG frames
        ok, png = cv2.imencode(".png", np.full((48, 64, 3), k * 4, np.uint8))
        msg = store.types["sensor_msgs/msg/CompressedImage"](header=_header(store, START_NS + round(k / 30 * 1e9), "c"),
                                                             format="png", data=np.frombuffer(png.tobytes(), np.uint8))
        events.append((START_NS + round(k / 30 * 1e9) + 1, cam, msg))
    for k in range(201):  # 100 Hz joint states, the finger joints first, as a driver may order them
        stamp = START_NS + k * 10_000_000
        names = ["panda_finger_joint1", *DEFAULT_JOINT_NAMES]
        events.append((stamp + 1, js, T.joint_state_msg(stamp, names, [0.04, *q(k / 100)])))
    for log_ns, conn, msg in sorted(events, key=lambda e: e[0]):
        writer.write(conn, log_ns, T.serialize(msg, conn.msgtype))
    writer.close()
    bag_map = write_map(tmp_path / "map.yaml", actions={"joint_states_topic": "/joint_states"}, success=None,
                        gripper={"topic": "/joint_states", "joint": "panda_finger_joint1", "closed_below": 0.03},
                        proprio={"topic": "/joint_states", "joints": list(DEFAULT_JOINT_NAMES)})
    out = tmp_path / "episodes"
    assert wmpo(["import-bag", str(src), "--map", str(bag_map), "--out", str(out)]) == 0
    ep = load_episode(out / "joints_only")
    assert ep.num_steps == 20 and np.all(ep.actions[:, 6] == -1)
    t = (np.append(ep.frame_stamps_ns["agentview"], ep.frame_stamps_ns["agentview"][-1] + 10**8) - START_NS) / 1e9
    poses = np.stack([arm.fk(q(tk)) for tk in t])
    position = poses[0, :3, 3] + np.concatenate([[np.zeros(3)], np.cumsum(ep.actions[:, :3], axis=0)])
    assert np.linalg.norm(position - poses[:, :3, 3], axis=1).max() < 1e-3
    rotation = [Rotation.from_matrix(poses[0, :3, :3])]
    for a in ep.actions:
        rotation.append(Rotation.from_rotvec(a[3:6]) * rotation[-1])
    errors = [(r * Rotation.from_matrix(p[:3, :3]).inv()).magnitude() for r, p in zip(rotation, poses, strict=True)]
    assert max(errors) < 1e-3
    assert np.abs(np.linalg.norm(ep.actions[:, :3], axis=1)).max() > 1e-3  # the hand really moved
    assert np.allclose(ep.proprio, np.stack([q(tk) for tk in t[:-1]]), atol=1e-6)
