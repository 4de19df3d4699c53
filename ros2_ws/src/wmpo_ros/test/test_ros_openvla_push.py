"""An OpenVLA-OFT checkpoint from import to the running robot and back: a miniature checkpoint in the published
layout -> `wmpo import-openvla` -> `wmpo export --parent` (re-signed with the robot's release key) -> `wmpo push`
into a running policy_node over real DDS -> the node serves the new version -> `~/rollback` restores the previous
one. After each step the active version is read three ways: the latched version topic, the node's policy_path
parameter, and the action chunks themselves (each equal to that version's own prediction for the camera frame)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
torch = pytest.importorskip("torch")

from rcl_interfaces.srv import GetParameters  # noqa: E402
from ros_helpers import NodeProcess, RosProbe, ros_env, start_node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from test_policy_oft import checkpoint, keys, oft_checkpoints  # noqa: E402, F401  (module fixtures)
from test_ros_hot_swap import CAMERA_SCRIPT  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    ACTION_CHUNK_TOPIC,
    COMMAND_QOS,
    INSTRUCTION_TOPIC,
    LATCHED_QOS,
    POLICY_VERSION_TOPIC,
    trajectory_to_chunk,
)

pytestmark = pytest.mark.ros
WMPO = [sys.executable, "-m", "wmpo_core.cli"]
DOMAIN_ID = 93
NODE = "/policy_node"
RATE_HZ = 10.0
INSTRUCTION = "pick up the coke can"


def _retrained_copy(src: Path, dst: Path) -> Path:
    """The same published layout with different weights (as after fine-tuning): noise on one Llama MLP."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(11)
    changed = 0
    for f in sorted(dst.glob("*.safetensors")):
        t = load_file(str(f))
        for k in sorted(t):
            if k.startswith("language_model.model.layers.0.mlp."):
                t[k] = t[k] + 0.5 * t[k].std() * torch.randn(t[k].shape, generator=g).to(t[k].dtype)
                changed += 1
        save_file(t, str(f))
    assert changed
    return dst


def _wmpo(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(WMPO + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def _version(pkg: Path) -> str:
    return json.loads((pkg / "manifest.json").read_text())["version"]


def test_imported_oft_package_pushed_into_the_running_node_then_rolled_back(oft_checkpoints, keys, tmp_path):  # noqa: F811
    from wmpo_core.policy.loading import load_policy
    from wmpo_core.registry.signing import generate_keypair

    release = keys  # the key the robot trusts
    workstation = generate_keypair(tmp_path / "workstation")  # a key the robot does not trust
    source_a, _ = oft_checkpoints
    source_b = _retrained_copy(source_a, tmp_path / "oft-retrained")

    # --- import both checkpoints; B is re-signed for the robot with A recorded as its parent
    pkg_a, imported_b, pkg_b = tmp_path / "pkg-a", tmp_path / "imported-b", tmp_path / "pkg-b"
    for src, out, key in ((source_a, pkg_a, release), (source_b, imported_b, workstation)):
        done = _wmpo("import-openvla", str(src), "--out", str(out), "--key", str(key.private_key), "--variant", "oft")
        assert done.returncode == 0, done.stderr
    v_a = _version(pkg_a)
    done = _wmpo("export", str(imported_b), "--out", str(pkg_b), "--key", str(release.private_key), "--parent", v_a)
    assert done.returncode == 0, done.stderr
    v_b = _version(pkg_b)
    assert v_b == _version(imported_b) != v_a
    done = _wmpo("verify", str(pkg_b), "--public-key", str(release.public_key))
    assert done.returncode == 0, done.stdout + done.stderr

    frame = np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    torch.set_num_threads(1)
    expected = {v: load_policy(p).predict_chunk({"agentview": frame}, INSTRUCTION) for v, p in ((v_a, pkg_a), (v_b, pkg_b))}
    assert expected[v_a].shape == (8, 7) and not np.allclose(expected[v_a], expected[v_b], atol=1e-3)

    # --- the robot: a policy folder holding A, a policy node serving it, a camera publishing one frame
    robot_dir = tmp_path / "robot" / "policies"
    env = ros_env(DOMAIN_ID)
    done = _wmpo("push", str(pkg_a), "--to", str(robot_dir), "--public-key", str(release.public_key), "--no-load",
                 env=env)
    assert done.returncode == 0, done.stderr
    params = {"backend": "vla", "policy_path": str(robot_dir / v_a), "policy_root": str(robot_dir),
              "trusted_keys": str(release.public_key), "cameras": ["agentview"], "control_rate_hz": RATE_HZ,
              "replan_every": 2, "vla.num_threads": 1, "load_timeout_s": 60.0}
    np.save(tmp_path / "frames.npy", frame[None])
    probe = RosProbe(DOMAIN_ID, name="oft_push_probe")
    node = start_node("wmpo_ros.policy_node", params, DOMAIN_ID, tmp_path)
    camera = NodeProcess([sys.executable, "-c", CAMERA_SCRIPT, str(tmp_path / "frames.npy"), str(int(1e9 / RATE_HZ))],
                         env, tmp_path / "camera.log")
    try:
        chunks = probe.subscribe(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        versions = probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
        probe.publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS).publish(String(data=INSTRUCTION))
        probe.wait_for_node_ready("policy_node", 90, node)

        def active_is(version: str, n_chunks: int = 3) -> None:
            """The version topic, policy_path and the next chunks all say `version`."""
            probe.wait_for(lambda: bool(versions) and versions.last().data == version, 60,
                           f"{POLICY_VERSION_TOPIC} = {version}", node)
            request = GetParameters.Request(names=["policy_path"])
            path = probe.call(GetParameters, f"{NODE}/get_parameters", request).values[0].string_value
            assert path == str(robot_dir / version)
            start = len(chunks)
            probe.wait_for(lambda: len(chunks) >= start + n_chunks, 60, f"{n_chunks} chunks from {version}", node)
            for msg in list(chunks)[start:]:
                np.testing.assert_allclose(trajectory_to_chunk(msg), expected[version], atol=1e-5)

        active_is(v_a)

        # the workstation-signed import is refused before anything reaches the robot
        done = _wmpo("push", str(imported_b), "--to", str(robot_dir), "--node", NODE,
                     "--public-key", str(release.public_key), env=env)
        assert done.returncode == 1 and "is not a trusted key" in done.stderr, done.stdout + done.stderr
        assert not (robot_dir / v_b).exists()
        active_is(v_a)

        done = _wmpo("push", str(pkg_b), "--to", str(robot_dir), "--node", NODE, "--public-key",
                     str(release.public_key), "--timeout", "30", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"loaded {v_b}" in done.stdout and f"previous {v_a} kept for rollback" in done.stdout, done.stdout
        active_is(v_b)

        response = probe.call(Trigger, f"{NODE}/rollback", timeout=30)
        assert response.success and response.message == f"rolled back from {v_b} to {v_a}", response.message
        active_is(v_a)
        assert [m.data for m in versions][-3:] == [v_a, v_b, v_a]
        assert node.alive()
    finally:
        camera.stop()
        node.stop()
        probe.close()
