"""GRPO in imagination: real tiny world model, real VLA forward/backward, real checkpoints and packages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.rl.config import WMPOConfig
from wmpo_core.rl.grpo import GRPOConfig, group_relative_advantages
from wmpo_core.rl.rollouts import StartStates, concatenate, imagine_trajectories
from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs, grpo_epochs, read_log, train_wmpo

SIZE, C, K = 32, 2, 4


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; the machine's cores are shared with other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_world_model():
    from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
    from wmpo_core.world_model.transformer import VideoDiffusionTransformer
    from wmpo_core.world_model.vae import TinyVAEConfig, make_tiny_vae

    torch.manual_seed(0)
    vae = make_tiny_vae(TinyVAEConfig(image_size=SIZE, block_out_channels=(8, 8, 16), latent_channels=4)).eval()
    vae.requires_grad_(False)
    noise, sampler = make_schedulers()
    transformer = VideoDiffusionTransformer(latent_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                                            mlp_ratio=2.0, context_frames=C, chunk_size=K).eval()
    return WorldModel(vae, transformer, noise, sampler, WorldModelSettings(image_size=SIZE, num_inference_steps=2))


def tiny_policy(seed: int = 0, image_size: int = SIZE):
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy

    torch.manual_seed(seed)
    cfg = VLAConfig(image_size=image_size, patch_size=8, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                    vision_intermediate_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                    intermediate_size=64, chunk_size=K, max_text_tokens=24)
    return VLAPolicy(cfg, version="base-0")


def solid_starts() -> StartStates:
    """Start frames whose brightness decides the reward class: black fails, white succeeds, grey is mixed."""
    levels = [0, 255, 128, 128]
    frames = np.stack([np.full((1, SIZE, SIZE, 3), v, np.uint8) for v in levels])
    return StartStates(frames, ["lift the cube"] * len(levels), [f"ep-{v}-{i}" for i, v in enumerate(levels)])


def frame_rule_reward(trajectories):
    """A real function of the frames: start brightness decides black / white starts; for grey starts
    success is the parity of the pixel sum of the last imagined frame (differs between group members)."""
    out = []
    for frames in trajectories:
        start = float(frames[0].mean())
        if start < 60:
            out.append((False, None))
        elif start > 200:
            out.append((True, len(frames) - 1))
        else:
            ok = int(frames[-1].astype(np.int64).sum()) % 2 == 0
            out.append((ok, len(frames) - 1 if ok else None))
    return out


@pytest.fixture(scope="module")
def world_model():
    return tiny_world_model()


def test_grpo_step_raises_logprob_of_positive_advantage(world_model):
    policy = tiny_policy()
    starts = solid_starts()
    grpo = GRPOConfig(group_size=4, temperature=1.6, learning_rate=3e-4, minibatch_size=8, update_epochs=1)
    batch = imagine_trajectories(world_model, policy, frame_rule_reward, starts, [2, 3], horizon=2 * K,
                                 group_size=4, temperature=1.6, seed=7)
    assert batch.num_trajectories == 8 and batch.num_rows == 8 * 2
    assert batch.images["agentview"].shape == (16, SIZE, SIZE, 3)
    # The fixed batch: the informative groups of this imagination (as dynamic sampling would keep).
    batch = concatenate([g for g in batch.groups() if bool((g.reward != g.reward[0]).any())])
    assert batch.num_trajectories >= 4, "the seeded imagination must give at least one mixed group"
    rewards = batch.group_rewards()
    advantages = group_relative_advantages(rewards).flatten()
    module = PolicyLogProbs(policy)
    with torch.no_grad():
        before = batch.sequence_log_probs(policy, grpo.temperature)
    optimizer = torch.optim.Adam(policy.parameters(), lr=grpo.learning_rate)
    stats = grpo_epochs(GRPOPolicy(module), policy, optimizer, batch, advantages, grpo, torch.Generator().manual_seed(0))
    # Sampling-time log-probs agree with the training forward: the first ratio is 1.
    assert stats["gradient_steps"] == 1 and stats["ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert stats["grad_norm"] > 0 and stats["entropy_is_estimate"] == 0.0 and stats["entropy"] > 0
    with torch.no_grad():
        change = batch.sequence_log_probs(policy, grpo.temperature) - before
    assert float(change[advantages > 0].mean()) > 0 > float(change[advantages < 0].mean()), (change, advantages)


def test_trainer_dynamic_sampling_discards_uniform_groups_and_resumes(world_model, tmp_path):
    starts = solid_starts()
    config = WMPOConfig(grpo=GRPOConfig(group_size=4, learning_rate=1e-4, minibatch_size=8), iterations=2,
                        groups_per_batch=2, starts_per_round=4, max_sampling_rounds=3, horizon=K,
                        checkpoint_every=1, package_every=1)
    cut = train_wmpo(tiny_policy(), world_model, frame_rule_reward, starts, tmp_path / "run", config,
                     progress=False, stop_after=1)
    assert not cut["finished"] and (tmp_path / "run" / "checkpoints" / "step-000001").is_dir()
    result = train_wmpo(tiny_policy(), world_model, frame_rule_reward, starts, tmp_path / "run", config, progress=False)
    rows = read_log(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2] and result["finished"]
    for r in rows:
        # Every round imagines the 4 starts once: 1 black (all fail), 1 white (all succeed), 2 grey.
        assert r["all_failure_groups"] == r["sampling_rounds"] and r["all_success_groups"] == r["sampling_rounds"]
        assert r["kept_fraction"] <= 0.5 and r["groups_updated"] == r["kept_groups"]
        assert r["kept_groups"] == 2 or r["sampling_capped"] == 1.0
        for key in ("clip_frac_low", "clip_frac_high", "ratio_mean", "entropy", "grad_norm", "imagination_success_rate"):
            assert key in r, key
    manifest = json.loads((tmp_path / "run" / "policy" / "manifest.json").read_text())
    assert manifest["parent"] == "base-0" and manifest["training_data"]["method"] == "wmpo"
    from wmpo_core.policy.loading import load_package

    resumed = load_package(tmp_path / "run" / "policy")
    assert resumed.version == manifest["version"]
    # The interrupted and resumed run ends with the weights of an uninterrupted one.
    # A snapshot package after iteration 1 (the final one is `policy`), loadable for validation.
    snapshot = load_package(tmp_path / "run" / "packages" / "iter_0001")
    assert json.loads((tmp_path / "run" / "packages" / "iter_0001" / "manifest.json").read_text())["parent"] == "base-0"
    assert sorted(p.name for p in (tmp_path / "run" / "packages").iterdir()) == ["iter_0001"]
    assert any(not torch.equal(a, b) for a, b in zip(snapshot.state_dict().values(), resumed.state_dict().values(),
                                                      strict=True))
    straight = tiny_policy()
    train_wmpo(straight, world_model, frame_rule_reward, starts, tmp_path / "straight", config, progress=False)
    assert read_log(tmp_path / "straight")[-1]["gradient_steps"] >= 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"resumed weights differ at {name}"


def test_video_reward_declares_success_at_the_first_clip_above_tau():
    from wmpo_core.reward.model import RewardModel, RewardSettings
    from wmpo_core.rl.rollouts import VideoReward

    torch.manual_seed(0)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, min_frame=3))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 2 * SIZE, 2 * SIZE, 3), dtype=np.uint8)  # resized to the model's 32 px
    from wmpo_core.data.frames import resize_frames

    ends, scores = model.clip_scores(resize_frames(frames, SIZE))
    allowed = ends >= 3
    model.settings.tau = float(np.sort(scores[allowed])[-2])  # exactly one allowed clip lies above tau
    ((success, step),) = VideoReward(model)([frames])
    assert success and step == int(ends[allowed][np.argmax(scores[allowed])])
    model.settings.tau = float(scores.max())
    assert VideoReward(model)([frames]) == [(False, None)]


def test_trainer_config_errors_name_file_and_field(tmp_path):
    from wmpo_core.rl.config import load_config

    path = tmp_path / "wmpo.json"
    path.write_text(json.dumps({"iterations": 3, "grpo": {"group_size": 4, "temprature": 1.0}}))
    with pytest.raises(ValueError, match=r"wmpo\.json\.grpo: unknown field\(s\) \['temprature'\]"):
        load_config(WMPOConfig, path)
    path.write_text(json.dumps({"iterations": 3, "grpo": {"group_size": 4}}))
    config = load_config(WMPOConfig, path)
    assert config.iterations == 3 and config.grpo.group_size == 4 and config.grpo.clip_high == 0.28
    config.horizon = 0
    with pytest.raises(ValueError, match="config.horizon"):
        config.validate()


def test_branched_start_states_and_rewards_in_episode_steps(world_model, tmp_path):
    """`start: branch`: the c real frames before (outcome - branch_before); the reward sees the real prefix,
    then the imagined frames, and a success at episode frame f means f - (branch - 1) executed steps."""
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.rl.rollouts import load_start_states
    from wmpo_core.world_model.synthetic import toy_task_episode, write_episode_bag

    folder = tmp_path / "episodes"
    for seed, ok in ((0, True), (1, True), (2, False)):
        write_episode_bag(folder, toy_task_episode(30, seed, success=ok, image_size=SIZE))
    episodes = load_episodes(folder, "agentview", SIZE)
    steps = {ep.episode_id: ep.success_step for ep in episodes}
    assert steps["ok-0000"] is not None and steps["fail-0002"] is None
    starts = load_start_states(folder, "agentview", SIZE, start="branch", branch_before=6, context_frames=C)
    assert starts.frames.shape == (3, C, SIZE, SIZE, 3) and starts.prefixes is not None
    median = int(np.median([s for s in steps.values() if s is not None]))
    for i, ep in enumerate(episodes):
        outcome = min(ep.success_step if ep.success else median, len(ep.frames) - 1)
        t = outcome - 6
        assert len(starts.prefixes[i]) == t and np.array_equal(starts.prefixes[i], ep.frames[:t])
        assert np.array_equal(starts.frames[i], ep.frames[t - C : t])
    first = load_start_states(folder, "agentview", SIZE)
    assert first.prefixes is None and first.frames.shape == (3, 1, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="start"):
        load_start_states(folder, "agentview", SIZE, start="middle")

    seen = []

    def reward(trajectories):
        seen.extend(trajectories)
        return [(True, len(f) - 2) for f in trajectories]  # success shown on the second-to-last frame

    batch = imagine_trajectories(world_model, tiny_policy(), reward, starts, [0], horizon=2 * K, group_size=2,
                                 temperature=1.0, seed=3)
    t = len(starts.prefixes[0])
    assert all(len(f) == t + 2 * K and np.array_equal(f[:t], starts.prefixes[0]) for f in seen)
    # Success at episode frame t + 2K - 2 = imagined step 2K - 1 (step 0 is the last real frame, t - 1).
    assert batch.length.tolist() == [2 * K - 1] * 2 and batch.success_step.tolist() == [2 * K - 1] * 2
    early = imagine_trajectories(world_model, tiny_policy(), lambda trajs: [(True, 3)] * len(trajs), starts, [0],
                                 horizon=K, group_size=2, temperature=1.0, seed=3)
    assert early.length.tolist() == [1, 1]  # a success the reward saw in the real prefix: the shortest trajectory
    with pytest.raises(ValueError, match="config.start"):
        WMPOConfig(start="middle").validate()
