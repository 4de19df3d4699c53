"""An imported OpenVLA-OFT package served by the policy node through the ROS 2 graph: `wmpo record --sim
--policy PKG` over real DDS, and every recorded action chunk is the package's own prediction for the
recorded image its header stamp names."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import ros_env  # noqa: E402
from test_policy_oft import checkpoint, keys, oft_checkpoints  # noqa: E402, F401  (module fixtures)

from wmpo_core.data import bag  # noqa: E402
from wmpo_core.data.episodes import list_episodes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim]
WMPO = [sys.executable, "-m", "wmpo_core.cli"]
DOMAIN_ID = 87


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _serve_and_read(pkg, keys, out, max_steps: int, domain_id: int):  # noqa: F811
    """`wmpo record --sim --policy PKG` for one episode; (policy, metadata, images by stamp, chunk messages)."""
    from wmpo_core.policy.loading import load_policy

    proc = subprocess.run(WMPO + ["record", "--sim", "--task", "lift", "--episodes", "1", "--max-steps", str(max_steps),
                                  "--out", str(out), "--policy", str(pkg), "--public-key", str(keys.public_key)],
                          env=ros_env(domain_id), capture_output=True, text=True, timeout=400)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((out / ".logs").glob("*.log"))) if out.is_dir() else ""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    policy = load_policy(pkg)
    (episode,) = list_episodes(out)
    meta = bag.read_metadata(episode.path)
    assert meta.policy_version == policy.version  # the node ran the imported package, not a fallback
    images, chunks = {}, []
    for topic, _, msg in bag.iter_messages(episode.path):
        if topic == "/camera/agentview/image_raw":
            images[_stamp(msg)] = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        elif topic == "/wmpo/action_chunk":
            chunks.append(msg)
    return policy, meta, images, _episode_chunks(images, chunks)


def _episode_chunks(images: dict, chunks: list) -> list:
    """The chunks computed from this episode's observations. The recorder starts before the simulator's
    reset, so a chunk the policy was still computing from the observation before the reset can land in
    the bag: its stamp precedes the episode's first image (the arm node rejects it as stale). Any other
    chunk must name an image in the bag."""
    first = min(images)
    kept = [msg for msg in chunks if _stamp(msg) >= first]
    assert all(_stamp(msg) in images for msg in kept), "a chunk names an observation the bag lacks"
    return kept


def test_imported_oft_package_drives_the_simulated_robot(oft_checkpoints, keys, tmp_path):  # noqa: F811
    from wmpo_core.cli import main as wmpo

    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft"]) == 0
    policy, meta, images, chunks = _serve_and_read(pkg, keys, tmp_path / "episodes", 24, DOMAIN_ID)
    assert len(chunks) >= 2
    for msg in chunks:
        served = np.array([p.positions for p in msg.points])
        assert served.shape == (8, 7)  # OFT's chunk of 8 x 7, decoded in one pass
        expected = policy.predict_chunk({"agentview": images[_stamp(msg)]}, meta.instruction)
        np.testing.assert_allclose(served, expected, atol=1e-5)


def test_imported_openvla_package_drives_the_simulated_robot(checkpoint, keys, tmp_path):  # noqa: F811
    """OpenVLA proper: one autoregressively decoded action per chunk, replanned every step."""
    from wmpo_core.cli import main as wmpo

    d, _ = checkpoint
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key)]) == 0
    policy, meta, images, chunks = _serve_and_read(pkg, keys, tmp_path / "episodes", 6, DOMAIN_ID + 1)
    assert len(chunks) >= 3
    for msg in chunks:
        served = np.array([p.positions for p in msg.points])
        assert served.shape == (1, 7)
        np.testing.assert_allclose(served, policy.predict_chunk({"agentview": images[_stamp(msg)]}, meta.instruction),
                                   atol=1e-5)
