"""Direct simulator collection writes bags that read back like recorded ones (real MuJoCo scene, real MCAP)."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.data import topics as T
from wmpo_core.data.bag import load_episode
from wmpo_core.data.dataset import EpisodeDataset
from wmpo_core.data.episodes import list_episodes
from wmpo_core.data.sim_bags import collect_sim_episodes, write_sim_episode

pytest.importorskip("robosuite")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_bags")
    ok = collect_sim_episodes("lift", 1, out / "ok", seed=7, noise=0.0, progress=False)
    after = collect_sim_episodes("lift", 1, out / "after", seed=7, noise=0.0, steps_after_success=5, progress=False)
    # a 6-step horizon cannot lift the cube: a labelled failure of known length
    short = collect_sim_episodes("lift", 1, out / "short", seed=8, noise=0.0, max_steps=6, progress=False)
    return out, ok[0], short[0], after[0]


def test_collected_episode_round_trips(collected):
    out, ok, short, _ = collected
    [info_ok] = list_episodes(out / "ok")
    [info_short] = list_episodes(out / "short")
    assert info_ok.status == "complete" and info_ok.success is True and info_ok.task == "lift"
    assert info_short.success is False and info_short.steps == 6
    ep = load_episode(ok)
    n = info_ok.steps
    assert 10 < n < 120
    assert ep.actions.shape == (n, 7) and ep.proprio.shape == (n, 9)
    assert ep.metadata.seed == 7 and ep.metadata.success is True and ep.metadata.complete
    assert ep.metadata.policy_version == "scripted-noise0"
    assert ep.frames["agentview"].shape == (n, 64, 64, 3)
    # frame header stamps at exactly the control period; chunks stamped with an observation stamp
    stamps = np.asarray(ep.frame_stamps_ns["agentview"])
    assert np.all(np.diff(stamps) == round(1e9 / 20))
    assert set(np.asarray(ep.chunk_stamps_ns).tolist()) <= set(stamps.tolist())
    assert ep.chunks.shape[1:] == (8, 7)
    # the first chunk's first action is what ran at step 0 (the demonstrator never exceeds the controller's range)
    np.testing.assert_allclose(ep.chunks[0][0], ep.actions[0], atol=1e-9)
    assert ep.dropped_actions == 0


def test_collected_bag_has_the_recorder_topics(collected):
    from rosbags.rosbag2 import Reader

    _, ok, _, _ = collected
    with Reader(ok) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
    for topic in (T.JOINT_STATES, T.ACTION_CHUNK, T.APPLIED_ACTION, T.INSTRUCTION, T.POLICY_VERSION, T.SUCCESS,
                  T.EPISODE, T.camera_image_topic("agentview"), T.camera_info_topic("agentview")):
        assert topics[topic] == T.msgtype_for_topic(topic), topic


def test_training_dataset_reads_collected_episodes(collected):
    out, _, _, _ = collected
    ds = EpisodeDataset(out / "ok", chunk_size=8, only_success=True)
    assert len(ds) == list_episodes(out / "ok")[0].steps
    sample = ds[0]
    assert sample["images"]["agentview"].shape == (64, 64, 3) and sample["actions"].shape == (8, 7)
    assert EpisodeDataset(out / "short", only_success=True).episodes == []


def test_success_step_reads_back_at_the_frame_that_shows_it(collected):
    from wmpo_core.sim import make_env

    _, ok, short, after = collected
    stopped, longer = load_episode(ok), load_episode(after)
    # Stopped at success: the success observation is the final one, which no action follows.
    assert stopped.success_step == stopped.num_steps
    # Recording went on 5 steps: the same start (same seed, noise 0) succeeds at the same step, and the
    # frame at that index is the simulator's first successful observation.
    assert longer.num_steps == stopped.num_steps + 5 and longer.success_step == stopped.num_steps
    env = make_env("lift", cameras=("agentview",), image_size=64)
    try:
        checks = [env.reset(seed=7).success]
        for action in longer.actions[: longer.success_step]:
            obs = env.step(action)
            checks.append(obs.success)
        assert obs.success
        np.testing.assert_array_equal(longer.success_flags[: longer.success_step + 1], checks)
        diff = np.abs(obs.images["agentview"].astype(int) - longer.frames["agentview"][longer.success_step]).mean()
        assert diff < 1.0
    finally:
        env.close()
    # The success check of every frame reads back as the simulator computed it.
    assert longer.success_flags is not None and len(longer.success_flags) == longer.num_steps
    assert not longer.success_flags[: longer.success_step].any() and longer.success_flags[longer.success_step]
    never = load_episode(short)
    assert never.success_step is None and not never.success_flags.any()  # never succeeded


def test_write_sim_episode_rejects_frameless_results(tmp_path):
    from wmpo_core.data.bag import EpisodeMetadata
    from wmpo_core.sim.rollout import EpisodeResult

    result = EpisodeResult("lift", "lift the red cube", 0, {}, np.zeros((2, 7)), np.zeros((2, 7)),
                           np.zeros((3, 9)), np.zeros((3, 3)), False, 2, None)
    with pytest.raises(ValueError, match="no frames"):
        write_sim_episode(result, tmp_path, EpisodeMetadata.new("lift", "lift the red cube"))
    assert not any(tmp_path.iterdir())


def test_policy_collection_samples_reproducibly(tmp_path):
    # A learned policy collects sampled (temperature > 0) with torch seeded by the episode seed: the same seed
    # records the same actions twice, and greedy collection records different ones.
    import torch

    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.registry.package import save_package

    torch.manual_seed(0)
    cfg = VLAConfig(patch_size=16, vision_hidden_size=32, vision_layers=1, vision_heads=2, vision_intermediate_size=64,
                    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_text_tokens=24)
    package = save_package(VLAPolicy(cfg), tmp_path / "pkg")
    runs = {}
    for name, temperature in (("a", 1.0), ("b", 1.0), ("greedy", 0.0)):
        [bag] = collect_sim_episodes("lift", 1, tmp_path / name, seed=11, policy=str(package), max_steps=8,
                                     temperature=temperature, progress=False)
        runs[name] = load_episode(bag)
    np.testing.assert_array_equal(runs["a"].actions, runs["b"].actions)
    assert not np.array_equal(runs["a"].actions, runs["greedy"].actions)
    assert runs["a"].metadata.extra["temperature"] == 1.0 and runs["greedy"].metadata.extra["temperature"] == 0.0
    with pytest.raises(ValueError, match="temperature"):
        collect_sim_episodes("lift", 1, tmp_path / "bad", policy=str(package), temperature=-1.0, progress=False)


def test_a_collection_records_the_recipes_cameras(tmp_path):
    """The pipeline's collect step renders and records the cameras a recipe names (here only the zoomed
    workspace view), not the default agentview."""
    from wmpo_core.pipeline.steps import Collection, collect

    result = collect(Collection("scripted", "lift", 1, 3, direct=True, max_steps=4, cameras=("workspace",)), tmp_path)
    (episode,) = list_episodes(result["episodes_dir"])
    ep = load_episode(episode.path)
    assert set(ep.frames) == {"workspace"}, set(ep.frames)
    assert collect(Collection("scripted", "lift", 1, 3, direct=True, max_steps=4), tmp_path / "default")["episodes"] == 1
    assert set(load_episode(list_episodes(tmp_path / "default" / "episodes")[0].path).frames) == {"agentview"}


def test_parallel_collection_writes_the_same_episodes_as_one_process(tmp_path):
    """--jobs splits the start states over spawned processes; every episode depends on its seed only."""
    kwargs = dict(seed=20, noise=0.5, max_steps=6, repeats=1, progress=False)
    one = collect_sim_episodes("lift", 3, tmp_path / "one", jobs=1, **kwargs)
    two = collect_sim_episodes("lift", 3, tmp_path / "two", jobs=2, **kwargs)
    assert [load_episode(p).metadata.seed for p in two] == [20, 21, 22]  # returned in seed order
    for a, b in zip(one, two, strict=True):
        ea, eb = load_episode(a), load_episode(b)
        assert ea.metadata.seed == eb.metadata.seed
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.frames["agentview"], eb.frames["agentview"])
    assert len(list_episodes(tmp_path / "two")) == 3
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="jobs"):
            collect_sim_episodes("lift", 2, tmp_path / "bad", jobs=bad, progress=False)
    assert not (tmp_path / "bad").exists()
