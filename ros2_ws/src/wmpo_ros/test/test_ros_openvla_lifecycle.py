"""An OpenVLA and an OpenVLA-OFT checkpoint (miniatures in the published layouts), each the whole way, real files
and real processes end to end:

    import-openvla -> verify -> predict (equal to a reference forward) -> served by the policy node through the
    ROS 2 graph (`wmpo record --sim --policy PKG`, every recorded chunk equal to the package's own prediction)
    -> train-policy --init with LoRA + bf16 on the episode just recorded -> grpo (GRPO in imagination, a tiny
    world model and reward model) with LoRA + bf16 -> export
    (re-signed with the robot's key, the imported package as parent) -> push into a running policy node over
    DDS -> the node serves it -> ~/rollback restores the imported package.

After each step on the robot the active version is read three ways: the latched version topic, the node's
policy_path parameter, and the action chunks themselves (each equal to that version's own prediction)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rcl_interfaces.srv import GetParameters  # noqa: E402
from ros_helpers import NodeProcess, RosProbe, ros_env, start_node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from test_policy_oft import _png, _reference_oft, checkpoint, keys, oft_checkpoints  # noqa: E402, F401
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

from wmpo_core.data import bag  # noqa: E402
from wmpo_core.data.episodes import list_episodes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim]
WMPO = [sys.executable, "-m", "wmpo_core.cli"]
NODE = "/policy_node"
RATE_HZ = 10.0
INSTRUCTION = "pick up the coke can"  # the instruction test_policy_oft's reference forward encodes
VARIANTS = {  # variant -> (ROS domain id, steps recorded, chunk shape)
    "openvla": (87, 6, (1, 7)),
    "oft": (93, 24, (8, 7)),
}
# Tiny imagination models (the world model's chunk must be the policy's: 1 for OpenVLA, 8 for OFT)
TINY_WM = {"steps": 40, "batch_size": 4, "lr": 3e-3, "num_inference_steps": 2, "vae_steps": 2, "vae_batch_size": 4,
           "tiny_vae": {"block_out_channels": [8, 8, 16]},
           "transformer": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                           "context_frames": 2}}
TINY_REWARD = {"steps": 2, "batch_size": 4, "lr": 1e-3, "val_fraction": 0.5, "score_stride": 4,
               "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}}
TINY_GRPO = {"iterations": 2, "groups_per_batch": 1, "starts_per_round": 6, "max_sampling_rounds": 4, "horizon": 8,
             "grpo": {"group_size": 4, "minibatch_size": 4, "learning_rate": 1e-2}}


@pytest.fixture(scope="module")
def imagination(tmp_path_factory) -> Path:
    """Toy episode bags (half successes), a tiny reward model and a tiny world model per chunk size (1, 8)."""
    from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

    root = tmp_path_factory.mktemp("imagination")
    for seed in range(6):
        write_episode_bag(root / "episodes", moving_square_episode(24, seed, 64, success=seed % 2 == 0))
    (root / "reward.json").write_text(json.dumps(TINY_REWARD))
    _ok(_wmpo("train-reward", "--episodes", str(root / "episodes"), "--out", str(root / "reward"),
              "--config", str(root / "reward.json")))
    for k in (1, 8):
        config = json.loads(json.dumps(TINY_WM))
        config["transformer"]["chunk_size"] = k
        (root / f"wm{k}.json").write_text(json.dumps(config))
        _ok(_wmpo("train-world-model", "--episodes", str(root / "episodes"), "--out", str(root / f"wm{k}"),
                  "--config", str(root / f"wm{k}.json")))
        # the threshold set on this world model's imagined replays, as the pipeline does: both outcomes occur
        _ok(_wmpo("calibrate-reward", "--model", str(root / "reward"), "--world-model", str(root / f"wm{k}"),
                  "--episodes", str(root / "episodes"), "--out", str(root / f"reward{k}")))
    (root / "grpo.json").write_text(json.dumps(TINY_GRPO))
    return root


def _wmpo(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(WMPO + list(args), env=env, capture_output=True, text=True, timeout=timeout)
    return done


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args[3:]}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _version(pkg: Path) -> str:
    return json.loads((pkg / "manifest.json").read_text())["version"]


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _served_chunks(episode_path: Path) -> tuple[dict, list]:
    """(images by stamp, chunk messages computed from this episode's observations). The recorder starts before
    the simulator's reset, so a chunk the policy was still computing from the observation before the reset can
    land in the bag: its stamp precedes the episode's first image (the arm node rejects it as stale). Any other
    chunk must name an image in the bag."""
    images, chunks = {}, []
    for topic, _, msg in bag.iter_messages(episode_path):
        if topic == "/camera/agentview/image_raw":
            images[_stamp(msg)] = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        elif topic == "/wmpo/action_chunk":
            chunks.append(msg)
    first = min(images)
    kept = [msg for msg in chunks if _stamp(msg) >= first]
    assert all(_stamp(msg) in images for msg in kept), "a chunk names an observation the bag lacks"
    return images, kept


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkpoint_import_serve_train_grpo_export_push_rollback(variant, checkpoint, oft_checkpoints, keys,  # noqa: F811
                                                                   imagination, tmp_path):
    from safetensors import safe_open

    from wmpo_core.policy.loading import load_policy
    from wmpo_core.policy.openvla import load_openvla

    domain_id, record_steps, chunk_shape = VARIANTS[variant]
    source = checkpoint[0] if variant == "openvla" else oft_checkpoints[0]
    release = keys  # the key the robot trusts
    env = ros_env(domain_id)
    torch.set_num_threads(1)

    # --- import -> verify -> predict, equal to the reference forward of the raw checkpoint
    pkg_a = tmp_path / "imported"
    _ok(_wmpo("import-openvla", str(source), "--out", str(pkg_a), "--key", str(release.private_key),
              "--variant", variant))
    _ok(_wmpo("verify", str(pkg_a), "--public-key", str(release.public_key)))
    image, png = _png(tmp_path)
    done = _ok(_wmpo("predict", "--policy", str(pkg_a), "--image", str(png), "--instruction", INSTRUCTION, "--json"))
    predicted = np.asarray(json.loads(done.stdout)["chunk"])
    assert predicted.shape == chunk_shape
    if variant == "oft":  # the official OFT predict_action written out from the raw tensors
        reference = _reference_oft(source, image)[1]
    else:  # OpenVLA's loader, itself checked against a written-out reference forward in test_policy_openvla
        reference = load_openvla(source).predict_chunk({"agentview": image}, INSTRUCTION)
    np.testing.assert_allclose(predicted, reference, atol=1e-5)
    v_a = _version(pkg_a)

    # --- served by the policy node through the ROS 2 graph, recorded to a bag
    episodes = tmp_path / "episodes"
    done = _wmpo("record", "--sim", "--task", "lift", "--episodes", "1", "--max-steps", str(record_steps),
                 "--out", str(episodes), "--policy", str(pkg_a), "--public-key", str(release.public_key), env=env)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((episodes / ".logs").glob("*.log"))) if episodes.is_dir() else ""
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{logs}"
    policy_a = load_policy(pkg_a)
    (episode,) = list_episodes(episodes)
    meta = bag.read_metadata(episode.path)
    assert meta.policy_version == v_a  # the node ran the imported package, not a fallback
    images, chunks = _served_chunks(episode.path)
    assert len(chunks) >= 2
    for msg in chunks:
        served = np.array([p.positions for p in msg.points])
        assert served.shape == chunk_shape
        np.testing.assert_allclose(served, policy_a.predict_chunk({"agentview": images[_stamp(msg)]},
                                                                  meta.instruction), atol=1e-5)

    # --- train-policy --init with LoRA + bf16 on that episode, then GRPO in imagination with LoRA + bf16
    tuned_run = tmp_path / "bc"
    done = _ok(_wmpo("train-policy", "--init", str(pkg_a), "--episodes", str(episodes), "--all-episodes",
                     "--out", str(tuned_run), "--lora-rank", "4", "--dtype", "bfloat16", "--steps", "2",
                     "--batch-size", "2", "--lr", "1e-2", "--no-progress"))
    tuned = Path(done.stdout.strip().splitlines()[-1])
    _ok(_wmpo("grpo", "--policy", str(tuned), "--world-model", str(imagination / f"wm{chunk_shape[0]}"),
              "--reward", str(imagination / f"reward{chunk_shape[0]}"), "--episodes", str(imagination / "episodes"),
              "--config", str(imagination / "grpo.json"), "--out", str(tmp_path / "grpo"), "--lora-rank", "4",
              "--dtype", "bfloat16", "--quiet"))
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "log.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["gradient_steps"] >= 1]  # an informative group was imagined and trained on
    assert trained, rows
    assert all(r["ratio_min"] == r["ratio_max"] == 1.0 for r in trained)  # bf16 rollout and update: same numbers
    improved = tmp_path / "grpo" / "policy"
    with safe_open(str(improved / "model.safetensors"), framework="pt") as f, \
            safe_open(str(pkg_a / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys())  # adapters merged: the robot loads one plain package
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        # the imported fp32 weights, trained as bf16: only the LoRA targets (the Llama's linear layers) moved
        changed = [k for k in g.keys() if not torch.equal(f.get_tensor(k), g.get_tensor(k).to(torch.bfloat16))]
    assert changed and all(k.startswith("language_model.model.layers.") for k in changed), changed[:4]

    # --- export for the robot (its key, the imported package as parent)
    pkg_b = tmp_path / "release"
    _ok(_wmpo("export", str(improved), "--out", str(pkg_b), "--key", str(release.private_key), "--parent", v_a))
    _ok(_wmpo("verify", str(pkg_b), "--public-key", str(release.public_key)))
    v_b = _version(pkg_b)
    assert v_b != v_a
    frame = np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    expected = {v: load_policy(p).predict_chunk({"agentview": frame}, INSTRUCTION) for v, p in ((v_a, pkg_a), (v_b, pkg_b))}

    # --- the robot: a policy folder holding A, a policy node serving it, a camera publishing one frame
    robot_dir = tmp_path / "robot" / "policies"
    _ok(_wmpo("push", str(pkg_a), "--to", str(robot_dir), "--public-key", str(release.public_key), "--no-load",
              env=env))
    params = {"backend": "vla", "policy_path": str(robot_dir / v_a), "policy_root": str(robot_dir),
              "trusted_keys": str(release.public_key), "cameras": ["agentview"], "control_rate_hz": RATE_HZ,
              "replan_every": 2, "vla.num_threads": 1, "load_timeout_s": 60.0}
    np.save(tmp_path / "frames.npy", frame[None])
    probe = RosProbe(domain_id, name=f"{variant}_lifecycle_probe")
    node = start_node("wmpo_ros.policy_node", params, domain_id, tmp_path)
    camera = NodeProcess([sys.executable, "-c", CAMERA_SCRIPT, str(tmp_path / "frames.npy"), str(int(1e9 / RATE_HZ))],
                         env, tmp_path / "camera.log")
    try:
        served = probe.subscribe(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
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
            start = len(served)
            probe.wait_for(lambda: len(served) >= start + n_chunks, 60, f"{n_chunks} chunks from {version}", node)
            for msg in list(served)[start:]:
                np.testing.assert_allclose(trajectory_to_chunk(msg), expected[version], atol=1e-5)

        active_is(v_a)
        # the unsigned training output is refused before anything reaches the robot
        done = _wmpo("push", str(improved), "--to", str(robot_dir), "--node", NODE,
                     "--public-key", str(release.public_key), env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        active_is(v_a)

        done = _ok(_wmpo("push", str(pkg_b), "--to", str(robot_dir), "--node", NODE, "--public-key",
                         str(release.public_key), "--timeout", "30", env=env))
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
