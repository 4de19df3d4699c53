"""The world model's success head: it learns per-frame success from the scene, scores imagination chunk by
chunk without changing it, and the ladder and its command report it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_rl_trainers_imagination import tiny_world_model

from wmpo_core.cli import main as wmpo
from wmpo_core.reward.model import RewardModel, RewardSettings
from wmpo_core.reward.train import roc_auc
from wmpo_core.world_model.imagine import ReplayPolicy, imagine, pad_start
from wmpo_core.world_model.success_head import (
    SuccessHead,
    SuccessHeadTrainConfig,
    frame_success,
    load_success_head,
    train_success_head,
    trajectory_score,
    window_probabilities,
)
from wmpo_core.world_model.synthetic import toy_task_episode, write_episode_bag

SIZE = 32
LENGTH = 24


COMMON_ACTIONS = toy_task_episode(LENGTH, 999, success=False, image_size=SIZE).actions


def _labelled(seed: int, success: bool):
    """A toy episode whose success shows (a yellow bar along the bottom) from a third of its length on, flagged
    per frame.

    Every episode gets the same actions: only the scene tells the outcome (with random actions per episode
    a head can also memorise the training episodes by their actions).
    """
    ep = toy_task_episode(LENGTH, seed, success=False, image_size=SIZE)
    ep.actions = COMMON_ACTIONS.copy()
    ep.success = success
    if success:
        ep.success_step = LENGTH // 3
        ep.success_flags = np.arange(LENGTH) >= ep.success_step
        ep.frames[ep.success_step :, -SIZE // 8 :] = (240, 220, 40)
    return ep


def _small(steps: int = 200) -> SuccessHeadTrainConfig:
    return SuccessHeadTrainConfig(steps=steps, batch_size=32, lr=3e-3, channels=16, hidden_size=64, val_fraction=0.25)


def test_frame_labels_come_from_the_recorded_flags_or_the_success_step():
    ep = _labelled(0, True)
    assert frame_success(ep).tolist() == [t >= 8 for t in range(LENGTH)]
    ep.success_flags = None  # no per-frame flags: every frame from the success step on
    assert frame_success(ep).sum() == LENGTH - 8
    assert not frame_success(_labelled(1, False)).any()
    flags = np.zeros(LENGTH, bool)
    flags[20] = True  # a success that was undone: only the flagged frame counts
    ep.success_flags = flags
    assert frame_success(ep).tolist() == flags.tolist()


def test_the_head_learns_success_from_the_scene_and_loses_it_with_another_episodes_context(tmp_path):
    wm = tiny_world_model()
    (tmp_path / "wm").mkdir()
    wm.save_pretrained(tmp_path / "wm")
    train = [_labelled(seed, seed % 2 == 0) for seed in range(16)]
    info = train_success_head(wm, tmp_path / "wm", train, tmp_path / "head", _small())
    head, loaded = load_success_head(tmp_path / "head", tmp_path / "wm")
    assert loaded.tau == info.tau and 0 < info.tau < 1 and loaded.episodes == info.episodes
    assert info.validation["val_episodes"] == 4 and info.validation["train_episodes"] == 12
    held = [_labelled(seed, seed % 2 == 0) for seed in range(100, 110)]
    labels = [bool(ep.success) for ep in held]
    own = [trajectory_score(p) for p in window_probabilities(head, wm, held)]
    assert roc_auc(own, labels) >= 0.9
    # Actions here are random and carry no outcome: with the next episode's scene (whose outcome alternates),
    # a head that reads the scene ranks the wrong way round.
    swapped = window_probabilities(head, wm, held, context_from=held[1:] + held[:1])
    assert roc_auc([trajectory_score(p) for p in swapped], labels) <= 0.3


def test_imagination_scores_each_chunk_from_its_context_without_changing_the_frames():
    wm = tiny_world_model()
    torch.manual_seed(1)
    head = SuccessHead(latent_channels=4, latent_size=8, context_frames=wm.context_frames, chunk_size=wm.chunk_size,
                       channels=8, hidden_size=16).eval()
    eps = [_labelled(seed, True) for seed in range(3)]
    horizon = 2 * wm.chunk_size
    starts = np.stack([ep.frames[:1] for ep in eps])
    actions = np.stack([ep.actions[:horizon] for ep in eps])
    plain = imagine(wm, ReplayPolicy(actions, wm.chunk_size), starts, "", horizon, [0, 1, 2])
    scored = imagine(wm, ReplayPolicy(actions, wm.chunk_size), starts, "", horizon, [0, 1, 2], success_head=head)
    assert plain.success_probs is None and scored.success_probs.shape == (3, horizon)
    assert np.array_equal(plain.frames, scored.frames)  # the head draws no randomness
    # By hand: chunk 1 from the padded real start frame's latents, chunk 2 from the context the world model
    # imagined (its own draw: seed + 0x5EED), each with that chunk's actions.
    c, k = wm.context_frames, wm.chunk_size
    latents = wm.encode(torch.from_numpy(pad_start(starts, c)))
    acts = torch.from_numpy(actions)
    with torch.no_grad():
        first = torch.sigmoid(head(latents, acts[:, :k])).numpy()
        gens = [torch.Generator().manual_seed(s + 0x5EED) for s in (0, 1, 2)]
        latents = torch.cat([latents, wm.predict_chunk(latents, acts[:, :k], gens)], dim=1)[:, -c:]
        second = torch.sigmoid(head(latents, acts[:, k : 2 * k])).numpy()
    np.testing.assert_allclose(scored.success_probs[:, :k], first, atol=1e-6)
    np.testing.assert_allclose(scored.success_probs[:, k:], second, atol=1e-5)


def test_trajectory_rules_and_bad_inputs():
    probs = np.array([0.1, 0.9, 0.2, 0.4])
    assert trajectory_score(probs) == 0.9 and trajectory_score(probs, "final") == 0.4
    assert trajectory_score(probs, "any", min_frame=2) == 0.4
    with pytest.raises(ValueError, match="rule"):
        trajectory_score(probs, "best")
    head = SuccessHead(latent_channels=4, latent_size=8, context_frames=2, chunk_size=4, channels=8, hidden_size=16)
    with pytest.raises(ValueError, match="context"):
        head(torch.zeros(1, 3, 4, 8, 8), torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="actions"):
        head(torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, 5, 7))
    for bad in ({"steps": 0}, {"lr": -1.0}, {"val_fraction": 1.0}, {"latent_noise": -0.1}, {"rule": "best"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SuccessHeadTrainConfig(**bad)


def test_train_success_head_and_diagnose_commands_on_bags(tmp_path, capsys):
    episodes = tmp_path / "episodes"
    for seed in range(8):
        write_episode_bag(episodes, toy_task_episode(LENGTH, seed, success=seed % 2 == 0, image_size=SIZE))
    tiny_world_model().save_pretrained(tmp_path / "wm")
    cfg = tmp_path / "head.json"
    cfg.write_text(json.dumps({"batch_size": 16, "channels": 8, "hidden_size": 16}))
    base = ["train-success-head", "--world-model", str(tmp_path / "wm"), "--episodes", str(episodes),
            "--config", str(cfg), "--steps", "20"]
    assert wmpo(base + ["--out", str(tmp_path / "head")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["validation"]["train_episodes"] + summary["validation"]["val_episodes"] == 8
    # An existing output folder is refused and left as it was.
    before = sorted(p.name for p in (tmp_path / "head").iterdir())
    assert wmpo(base + ["--out", str(tmp_path / "head")]) == 2
    assert "exists" in capsys.readouterr().err and sorted(p.name for p in (tmp_path / "head").iterdir()) == before

    torch.manual_seed(0)
    RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.5), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "reward")
    out = tmp_path / "ladder.json"
    assert wmpo(["diagnose-imagination", "--world-model", str(tmp_path / "wm"), "--reward", str(tmp_path / "reward"),
                 "--episodes", str(episodes), "--resamples", "200", "--success-head", str(tmp_path / "head"),
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "head (e) full replay" in table and "head (c) context of another episode" in table
    report = json.loads(out.read_text())
    assert set(report["success_head"]) == {"c_chunk", "c_swapped", "d_branch", "e_replay"}
    assert report["settings"]["head_tau"] == pytest.approx(summary["tau"])
    # Rung (c) of the head by hand, from the saved head.
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.world_model.model import WorldModel

    wm = WorldModel.from_pretrained(tmp_path / "wm")
    head, _ = load_success_head(tmp_path / "head", tmp_path / "wm")
    real = load_episodes(episodes, "agentview", SIZE)
    for ep, probs in zip(real, window_probabilities(head, wm, real), strict=True):
        assert report["success_head"]["c_chunk"]["scores"][ep.episode_id] == pytest.approx(trajectory_score(probs, "final"),
                                                                                            abs=1e-6)
    # A head trained on another world model's VAE is refused by name.
    other = tiny_world_model()
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.01)
    other.save_pretrained(tmp_path / "other_wm")
    assert wmpo(["diagnose-imagination", "--world-model", str(tmp_path / "other_wm"), "--reward",
                 str(tmp_path / "reward"), "--episodes", str(episodes), "--success-head", str(tmp_path / "head")]) == 2
    assert "another world model" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["final", "any"])
def test_grpo_imagination_is_scored_by_the_head_from_the_probabilities_imagination_made(rule):
    from test_rl_trainers_imagination import solid_starts, tiny_policy

    from wmpo_core.rl.rollouts import HeadReward, imagine_trajectories
    from wmpo_core.world_model.imagine import VLAImaginationPolicy
    from wmpo_core.world_model.success_head import SuccessHeadInfo

    wm, policy, starts = tiny_world_model(), tiny_policy(), solid_starts()
    k = wm.chunk_size
    torch.manual_seed(3)
    head = SuccessHead(latent_channels=4, latent_size=8, context_frames=wm.context_frames, chunk_size=k, channels=8,
                       hidden_size=16).eval()
    horizon, group = 2 * k, 3
    # The same imagination by hand (seed + position * G + g), to read the head's probabilities.
    by_hand = imagine(wm, VLAImaginationPolicy(policy, "agentview", 1.0), np.repeat(starts.frames[[0, 2]], group, 0),
                      "lift the cube", horizon, [5 + i for i in range(2 * group)], success_head=head).success_probs
    tau = float(np.median(by_hand[:, -1] if rule == "final" else by_hand.max(axis=1)))
    reward = HeadReward(head, SuccessHeadInfo(vae_sha256="", camera="agentview", image_size=SIZE, tau=tau, rule=rule))
    with pytest.raises(TypeError):
        reward([np.zeros((3, SIZE, SIZE, 3), np.uint8)])  # frames alone cannot be scored by the head
    batch = imagine_trajectories(wm, policy, reward, starts, [0, 2], horizon=horizon, group_size=group,
                                 temperature=1.0, seed=5)
    if rule == "final":
        expected = by_hand[:, -1] > tau
        lengths = [horizon] * len(expected)
    else:
        expected = (by_hand > tau).any(axis=1)
        lengths = [int(np.argmax(p > tau)) + 1 if ok else horizon for p, ok in zip(by_hand, expected, strict=True)]
    assert 0 < expected.sum() < len(expected)
    assert batch.reward.tolist() == expected.astype(float).tolist() and batch.length.tolist() == lengths


def test_grpo_takes_the_reward_the_success_head_or_both(tmp_path, capsys):
    base = ["grpo", "--policy", str(tmp_path / "p"), "--world-model", str(tmp_path / "wm"), "--episodes",
            str(tmp_path), "--out", str(tmp_path / "out")]
    assert wmpo(base) == 2 and "give --reward (the video classifier), --success-head, or both" in capsys.readouterr().err
    assert wmpo(base + ["--reward", "r", "--success-head", "h"]) == 2  # the missing policy, not the pair
    assert "or both" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_agreement_reward_is_the_video_reward_and_the_head_both_saying_success():
    """`grpo --reward RM --success-head HEAD`: on the very same imagined trajectories, success where the video
    model's last clip and the head's last frame are both above their thresholds, and nowhere else."""
    from test_rl_trainers_imagination import solid_starts, tiny_policy

    from wmpo_core.data.frames import resize_frames
    from wmpo_core.rl.rollouts import AgreementReward, HeadReward, VideoReward, imagine_trajectories
    from wmpo_core.world_model.imagine import VLAImaginationPolicy
    from wmpo_core.world_model.success_head import SuccessHeadInfo

    wm, policy, starts = tiny_world_model(), tiny_policy(), solid_starts()
    k, group, chosen = wm.chunk_size, 4, [0, 1, 2]
    horizon = 2 * k
    torch.manual_seed(3)
    head = SuccessHead(latent_channels=4, latent_size=8, context_frames=wm.context_frames, chunk_size=k, channels=8,
                       hidden_size=16).eval()
    torch.manual_seed(4)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, rule="final"))
    by_hand = imagine(wm, VLAImaginationPolicy(policy, "agentview", 1.0), np.repeat(starts.frames[chosen], group, 0),
                      "lift the cube", horizon, [5 + i for i in range(len(chosen) * group)], success_head=head)
    c = by_hand.context_frames
    video_final = np.array([model.clip_scores(resize_frames(f[c - 1:], SIZE))[1][-1] for f in by_hand.frames])
    model.settings.tau = float(np.median(video_final))
    head_final = by_hand.success_probs[:, -1]
    info = SuccessHeadInfo(vae_sha256="", camera="agentview", image_size=SIZE, tau=float(np.median(head_final)),
                           rule="final")
    video, by_head = VideoReward(model), HeadReward(head, info)
    expected = (video_final > model.settings.tau) & (head_final > info.tau)
    assert 0 < expected.sum() < min((video_final > model.settings.tau).sum(), (head_final > info.tau).sum())

    def rewards(reward):
        return imagine_trajectories(wm, policy, reward, starts, chosen, horizon=horizon, group_size=group,
                                    temperature=1.0, seed=5).reward.numpy()

    assert rewards(video).tolist() == (video_final > model.settings.tau).astype(float).tolist()
    assert rewards(by_head).tolist() == (head_final > info.tau).astype(float).tolist()
    assert rewards(AgreementReward(video, by_head)).tolist() == expected.astype(float).tolist()


@pytest.mark.parametrize("rule", ["any", "final"])
def test_a_ladder_row_of_the_head_follows_the_heads_rule(rule):
    from wmpo_core.reward.ladder import _head_row

    eps = [_labelled(seed, seed % 2 == 0) for seed in range(4)]
    labels = np.array([bool(ep.success) for ep in eps])
    # Best frame and last frame rank these the opposite way round.
    probs = [np.array([0.0, 0.2, 0.9, 0.1]), np.array([0.0, 0.3, 0.4, 0.6]),
             np.array([0.0, 0.8, 0.9, 0.2]), np.array([0.0, 0.1, 0.2, 0.5])]
    row = _head_row(probs, eps, labels, 0.5, rule, 200, 0)
    assert row["auc_by_rule"]["any"]["auc"] == 1.0 and row["auc_by_rule"]["final"]["auc"] == 0.0
    assert row["auc"] == row["auc_by_rule"][rule]["auc"]
    expected = {ep.episode_id: trajectory_score(p, rule) for ep, p in zip(eps, probs, strict=True)}
    assert row["scores"] == pytest.approx(expected)
