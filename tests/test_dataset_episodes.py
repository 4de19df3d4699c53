"""Episode dataset over real MCAP bags: alignment, chunk padding, lazy loading, corrupt bags, split, stats."""

import numpy as np
import pytest

from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter
from wmpo_core.data.dataset import EpisodeDataset, split_episode_ids

JOINTS = [f"j{i}" for i in range(9)]


def write_episode_bag(out_dir, episode_id, frames, actions, proprio=None, instruction="lift the cube",
                      success=True, task="lift", control_hz=20.0, action_names=T.ACTION_NAMES,
                      joint_names=JOINTS):
    """Write a real episode bag: frame t stamped just before applied action t (docs/interfaces.md)."""
    meta = EpisodeMetadata.new(task, instruction, episode_id=episode_id, control_hz=control_hz)
    period = int(1e9 / control_hz)
    t0 = 1_000_000_000
    with EpisodeWriter(out_dir, meta, start_ns=t0, flush_interval_s=None) as w:
        for cam in frames:
            w.add_topic(T.camera_image_topic(cam))
        w.add_topic(T.APPLIED_ACTION)
        w.add_topic(T.JOINT_STATES)
        for t in range(len(actions)):
            stamp = t0 + (t + 1) * period
            for cam, imgs in frames.items():
                w.write(T.camera_image_topic(cam), stamp, T.image_msg(stamp, imgs[t]))
            js = proprio[t] if proprio is not None else np.zeros(9)
            w.write(T.JOINT_STATES, stamp, T.joint_state_msg(stamp, joint_names, js))
            w.write(T.APPLIED_ACTION, stamp + period // 2, T.applied_action_msg(stamp + period // 2, actions[t], action_names))
        w.set_label(success)
    return out_dir / episode_id


def _episode(length, seed):
    rng = np.random.default_rng(seed)
    frames = {"agentview": np.stack([np.full((16, 16, 3), (seed * 40 + t) % 256, np.uint8) for t in range(length)])}
    actions = rng.normal(0, 0.02, (length, 7))
    actions[:, 6] = np.sign(rng.normal(size=length))
    actions[:, 0] = np.arange(length) * 0.001 + seed  # step and episode readable from the action
    return frames, actions, rng.normal(size=(length, 9))


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    data = {}
    for i, length in enumerate([5, 12, 9]):
        frames, actions, proprio = _episode(length, i)
        write_episode_bag(root, f"ep_{i}", frames, actions, proprio, success=i != 1,
                          instruction=f"task number {i}")
        data[f"ep_{i}"] = (frames, actions, proprio)
    bad = root / "ep_corrupt"
    bad.mkdir()
    (bad / "ep_corrupt_0.mcap").write_bytes(b"this is not an mcap file")
    return root, data


def test_index_chunks_padding_and_alignment(episodes):
    root, data = episodes
    with pytest.warns(RuntimeWarning, match="skipping episode .*ep_corrupt"):
        ds = EpisodeDataset(root, chunk_size=8)
    assert ds.episode_ids == ["ep_0", "ep_1", "ep_2"] and len(ds) == 5 + 12 + 9
    assert [p.name for p, _ in ds.skipped] == ["ep_corrupt"]
    s = ds[5 + 7]  # episode 1, step 7: 5 real steps then 3 padded
    frames, actions, proprio = data["ep_1"]
    assert s["episode_id"] == "ep_1" and s["t"] == 7 and s["instruction"] == "task number 1" and s["success"] == 0
    np.testing.assert_array_equal(s["images"]["agentview"], frames["agentview"][7])
    np.testing.assert_allclose(s["actions"][:5], actions[7:12], atol=1e-6)
    np.testing.assert_allclose(s["actions"][5:], np.repeat(actions[11:12], 3, 0), atol=1e-6)
    assert s["action_mask"].tolist() == [True] * 5 + [False] * 3
    np.testing.assert_allclose(s["proprio"], proprio[7], atol=1e-6)


def test_lazy_lru_cache(episodes):
    root, _ = episodes
    with pytest.warns(RuntimeWarning):
        ds = EpisodeDataset(root, chunk_size=4, cache_size=1)
    assert len(ds._cache) == 0  # indexing decodes nothing
    ds[0]
    ds[6]
    assert list(ds._cache) == [1]


def test_normalized_actions_and_stats_from_training_split(episodes):
    root, data = episodes
    train, val = split_episode_ids(["ep_0", "ep_1", "ep_2"], val_fraction=0.34, seed=0)
    assert sorted(train + val) == ["ep_0", "ep_1", "ep_2"] and train
    assert split_episode_ids(["ep_0", "ep_1", "ep_2"], 0.34, 0) == (train, val)  # deterministic
    ds = EpisodeDataset(root, chunk_size=8, episode_ids=train)
    stats = ds.compute_norm_stats("lift")
    all_train = np.concatenate([data[e][1] for e in train])
    np.testing.assert_allclose(stats.get("lift").q99, np.quantile(all_train, 0.99, axis=0), atol=1e-9)
    assert stats.get("lift").mask.tolist() == [True] * 6 + [False]
    ds.norm_stats, ds.unnorm_key = stats, "lift"
    s = ds[0]
    assert np.abs(s["actions"][:, :6]).max() <= 1.0
    assert set(np.unique(s["actions"][:, 6])) <= {-1.0, 1.0}  # gripper passes through


def test_bag_corrupted_after_indexing_is_skipped_with_warning(episodes, tmp_path):
    import shutil

    root, data = episodes
    for e in ("ep_0", "ep_2"):
        shutil.copytree(root / e, tmp_path / e)
    ds = EpisodeDataset(tmp_path, chunk_size=2)
    mcap = next((tmp_path / "ep_0").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:200])  # truncated after the index was built
    with pytest.warns(RuntimeWarning, match="skipping episode .*ep_0"):
        s = ds[1]
    assert s["episode_id"] == "ep_2"
    assert ds[0]["episode_id"] == "ep_2"  # remembered: no second attempt, no second warning
    assert ds.episode_ids == ["ep_2"]  # the manifest's training data no longer lists it
    assert [s["episode"] for s in ds.skipped_summary()] == ["ep_0"]


def test_duplicate_episode_ids_are_trained_on_once_and_named(episodes, tmp_path):
    import shutil

    root, _ = episodes
    shutil.copytree(root / "ep_0", tmp_path / "ep_0")
    shutil.copytree(root / "ep_0", tmp_path / "ep_0_copy")  # the same episode under another folder name
    shutil.copytree(root / "ep_2", tmp_path / "ep_2")
    with pytest.warns(RuntimeWarning, match="skipping episode .*ep_0_copy: duplicate episode id ep_0"):
        ds = EpisodeDataset(tmp_path, chunk_size=2)
    assert ds.episode_ids == ["ep_0", "ep_2"] and len(ds) == 5 + 9
    assert ds.skipped_summary()[0]["episode"] == "ep_0_copy"


def test_episodes_of_another_arm_are_skipped_by_name(tmp_path):
    for i in range(3):
        frames, actions, proprio = _episode(6, i)
        write_episode_bag(tmp_path, f"ep_{i}", frames, actions, proprio)
    frames, actions, proprio = _episode(6, 7)
    # A 6-dim action arm: the reader refuses its actions by name.
    write_episode_bag(tmp_path, "ep_six_dof", frames, np.zeros((6, 6)), proprio, action_names=T.ACTION_NAMES[:6])
    # A 7-joint arm: its actions read, its proprio has another size than the others'.
    write_episode_bag(tmp_path, "ep_seven_joints", frames, actions, proprio[:, :7], joint_names=JOINTS[:7])
    ds = EpisodeDataset(tmp_path, chunk_size=2)
    with pytest.warns(RuntimeWarning) as caught:
        stats = ds.compute_norm_stats()
    reasons = {str(w.message).split(": ")[0].rsplit("/", 1)[-1]: str(w.message) for w in caught}
    assert "lack ['gripper']" in reasons["ep_six_dof"]
    assert "action size 7 and proprio size 7; most episodes have 7 and 9" in reasons["ep_seven_joints"]
    assert stats.get().dim == 7 and stats.get(quantity="proprio").dim == 9
    assert ds.episode_ids == ["ep_0", "ep_1", "ep_2"]
    assert {ds[k]["episode_id"] for k in range(len(ds))} == {"ep_0", "ep_1", "ep_2"}
    # Without statistics computed on this folder, the first episode read sets the sizes: the odd episode is
    # skipped when first sampled, by name, and training goes on with the others.
    fresh = EpisodeDataset(tmp_path, chunk_size=2, norm_stats=stats)
    with pytest.warns(RuntimeWarning, match="ep_seven_joints.*proprio size 7"):
        seen = {fresh[k]["episode_id"] for k in range(len(fresh))}
    assert seen == {"ep_0", "ep_1", "ep_2"} and "ep_seven_joints" not in fresh.episode_ids
