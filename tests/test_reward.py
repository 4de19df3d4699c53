"""Reward model: BCE on one logit, clip labelling, tau calibration, the any-clip rule, commands on real bags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.cli import main as wmpo
from wmpo_core.reward.model import (
    RewardModel,
    RewardSettings,
    clip_end_indices,
    gather_clips,
    success_from_clip_scores,
)
from wmpo_core.reward.train import (
    RewardTrainConfig,
    augment_clips,
    balanced_accuracy,
    bce_loss,
    calibrate_tau,
    labelled_clip_ends,
    roc_auc,
)
from wmpo_core.world_model.synthetic import toy_task_episode, write_episode_bag

SIZE = 32
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def test_bce_training_step_reduces_loss_on_separable_clips():
    torch.manual_seed(0)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=8), **TINY)
    assert model.classifier.config.num_labels == 1
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (8, 8, SIZE, SIZE, 3), dtype=np.uint8)
    bright = rng.integers(180, 255, (8, 8, SIZE, SIZE, 3), dtype=np.uint8)
    clips = np.concatenate([dark, bright])
    labels = torch.tensor([0] * 8 + [1] * 8)
    first = bce_loss(model, clips, labels)
    # The loss is binary cross-entropy on the logit, not the MSE transformers picks for num_labels=1.
    logits = model.logits(clips)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    torch.testing.assert_close(first, expected)
    opt = torch.optim.AdamW(model.classifier.parameters(), lr=1e-3)
    for _ in range(15):
        loss = bce_loss(model, clips, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bce_loss(model, clips, labels).item()
    assert after < 0.5 * first.item(), f"BCE went from {first.item():.3f} to {after:.3f}"


def test_roc_auc_on_hand_made_scores():
    # successes 0.4, 0.7, 0.9 against failures 0.1, 0.5, 0.6: 1 + 3 + 3 of 9 pairs ranked right
    assert roc_auc([0.1, 0.4, 0.5, 0.6, 0.7, 0.9], [False, True, False, False, True, True]) == pytest.approx(7 / 9)
    assert roc_auc([0.2, 0.2, 0.9], [True, False, False]) == pytest.approx(0.25)  # a tie counts half
    assert roc_auc([0.3, 0.6], [True, True]) is None


def test_calibrate_tau_on_hand_made_scores():
    tau, f1 = calibrate_tau([0.1, 0.2, 0.3, 0.8, 0.9], [False, False, True, True, True])
    assert f1 == 1.0 and 0.2 < tau < 0.3
    # Overlapping classes: the best cut keeps 0.7 and 0.9, loses 0.4 (F1 = 4/5), tau in (0.6, 0.7).
    tau, f1 = calibrate_tau([0.1, 0.4, 0.5, 0.6, 0.7, 0.9], [False, True, False, False, True, True])
    assert f1 == pytest.approx(0.8) and 0.6 < tau < 0.7
    # Everything positive: any tau below the lowest score is right.
    tau, f1 = calibrate_tau([0.3, 0.6], [True, True])
    assert f1 == 1.0 and tau < 0.3
    with pytest.raises(ValueError, match="scores"):
        calibrate_tau([0.1], [True, False])


def test_balanced_threshold_rule_does_not_call_everything_a_success_when_most_succeed():
    # Most episodes succeed and the scores of four successes sit at the floor with the failures' (an imagined
    # replay that lost the cube): F1 is best calling everything a success (20/24), balanced accuracy cuts
    # between the floor and the clear successes (recalls 0.6 and 1.0).
    successes = [0.001, 0.002, 0.003, 0.004, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    failures = [0.0015, 0.0025, 0.0035, 0.3]
    scores, labels = successes + failures, [True] * 10 + [False] * 4
    tau, f1 = calibrate_tau(scores, labels)
    assert tau < 0.001 and f1 == pytest.approx(20 / 24)
    tau, value = calibrate_tau(scores, labels, rule="balanced")
    assert 0.3 < tau < 0.5 and value == pytest.approx(0.8)
    assert balanced_accuracy(np.array(scores) > tau, np.array(labels)) == pytest.approx(0.8)
    assert balanced_accuracy(np.ones(14, bool), np.array(labels)) == 0.5  # a constant answer is chance
    with pytest.raises(ValueError, match="rule must be one of"):
        calibrate_tau(scores, labels, rule="accuracy")


def test_clip_labels_follow_the_rule():
    ends = clip_end_indices(40, 8, 8)
    assert ends.tolist() == [7, 15, 23, 31, 39]
    ok = labelled_clip_ends(40, True, 8, 8, final_clips=2, early_fraction=0.25)
    assert ok == [(7, 0), (31, 1), (39, 1)]  # early negative, final positives, middle left out
    assert labelled_clip_ends(40, False, 8, 8) == [(e, 0) for e in ends.tolist()]
    assert labelled_clip_ends(40, None, 8, 8) == []
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    clips = gather_clips(frames, [2, 9], 4)
    assert clips[:, :, 0, 0, 0].tolist() == [[0, 0, 1, 2], [6, 7, 8, 9]]


def test_recorded_success_step_labels_the_lift_itself():
    # A bag that records when success first showed (recording went on 16 frames past it): every clip
    # ending at or after that frame is positive, clips ending well before it are negative (the grasp
    # with the cube still on the table), the few frames just before it are left out.
    cfg = RewardTrainConfig()
    labels = dict(labelled_clip_ends(56, True, cfg.clip_len, cfg.stride, cfg.final_clips, cfg.early_fraction,
                                     success_step=40, success_margin=4))
    positives = sorted(e for e, y in labels.items() if y == 1)
    negatives = sorted(e for e, y in labels.items() if y == 0)
    assert positives == list(range(40, 56))
    assert negatives == [7, 15, 23, 31] and all(e < 36 for e in negatives)
    # The cube was lifted at frame 40 and dropped at frame 50: the frames after the drop are not labelled.
    flags = np.zeros(56, dtype=bool)
    flags[40:50] = True
    dropped = labelled_clip_ends(56, True, 8, 8, success_step=40, success_margin=4, success_flags=flags)
    assert [e for e, y in dropped if y == 1] == list(range(40, 50))
    assert [e for e, y in dropped if y == 0] == [7, 15, 23, 31]
    # Success only with the final observation (recording stopped at it): the end-of-episode rule applies.
    assert labelled_clip_ends(40, True, 8, 8, 2, 0.25, success_step=40) == labelled_clip_ends(40, True, 8, 8, 2, 0.25)
    # A failed episode is negative everywhere, whatever its success step says.
    assert {y for _, y in labelled_clip_ends(120, False, 8, 1, success_step=30)} == {0}


def test_augment_clips_mirrors_and_shifts_whole_clips():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 255, (64, 4, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(augment_clips(clips, rng, flip=False, shift_px=0), clips)
    flipped = augment_clips(clips, np.random.default_rng(1), flip=True, shift_px=0)
    mirrored = np.array([np.array_equal(f, c[:, :, ::-1]) for f, c in zip(flipped, clips, strict=True)])
    untouched = np.array([np.array_equal(f, c) for f, c in zip(flipped, clips, strict=True)])
    assert np.all(mirrored | untouched) and 10 < mirrored.sum() < 54
    shifted = augment_clips(clips, np.random.default_rng(2), flip=False, shift_px=2)
    assert shifted.shape == clips.shape and shifted.dtype == np.uint8
    # Each clip moves as a whole: the centre of every frame is the input's centre displaced by one (dy, dx).
    for out, src in zip(shifted, clips, strict=True):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if np.array_equal(out[:, 4:12, 4:12], src[:, 4 - dy : 12 - dy, 4 - dx : 12 - dx])]
        assert len(hits) == 1
    assert not np.array_equal(shifted, clips)


def test_any_clip_rule_and_min_frame():
    ends = np.array([7, 8, 9, 10])
    scores = np.array([0.95, 0.2, 0.3, 0.4])
    assert success_from_clip_scores(ends, scores, tau=0.6) == (True, 0.95)
    assert success_from_clip_scores(ends, scores, tau=0.6, min_frame=8) == (False, 0.4)


def test_final_clip_rule_lets_only_the_last_clip_decide():
    """Beyond the paper: a transient confident clip (0.95 at frame 7) does not make the trajectory a success."""
    ends = np.array([7, 8, 9, 10])
    assert success_from_clip_scores(ends, np.array([0.95, 0.2, 0.3, 0.4]), tau=0.6, rule="final") == (False, 0.4)
    assert success_from_clip_scores(ends, np.array([0.1, 0.2, 0.3, 0.7]), tau=0.6, rule="final") == (True, 0.7)
    assert success_from_clip_scores(ends, np.array([0.1, 0.2, 0.3, 0.7]), tau=0.6, min_frame=11,
                                    rule="final") == (False, 0.0)
    with pytest.raises(ValueError, match="rule"):
        success_from_clip_scores(ends, np.ones(4), tau=0.6, rule="last")


def test_final_rule_reaches_grpos_reward_and_bad_rules_are_refused_early(tmp_path):
    """The rule is a reward-model setting: saved, loaded, used by trajectory_scores and by GRPO's VideoReward
    (success from the last clip, no success frame, so the whole imagined trajectory counts)."""
    from wmpo_core.reward.train import RewardTrainConfig
    from wmpo_core.rl.rollouts import VideoReward

    torch.manual_seed(0)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.5, rule="final"), **TINY)
    model.save_pretrained(tmp_path / "rw")
    loaded = RewardModel.from_pretrained(tmp_path / "rw")
    assert loaded.settings.rule == "final"
    videos = [toy_task_episode(14, seed, success=seed % 2 == 0, image_size=SIZE).frames for seed in range(4)]
    last = [float(loaded.clip_scores(v)[1][-1]) for v in videos]
    assert loaded.trajectory_scores(videos) == pytest.approx(last)
    loaded.settings.tau = float(np.median(last))  # some above, some not
    assert VideoReward(loaded)(videos) == [(x > loaded.settings.tau, None) for x in last]
    loaded.settings.rule = "any"
    best = [float(loaded.clip_scores(v)[1].max()) for v in videos]
    assert loaded.trajectory_scores(videos) == pytest.approx(best)
    with pytest.raises(ValueError, match="rule"):
        RewardSettings(rule="mean")
    with pytest.raises(ValueError, match="rule"):
        RewardTrainConfig(rule="max")


def test_train_and_eval_reward_commands_on_bags(tmp_path, capsys):
    episodes = tmp_path / "episodes"
    for seed in range(10):
        write_episode_bag(episodes, toy_task_episode(32, seed, success=seed % 2 == 0, image_size=SIZE))
    config = tmp_path / "reward.json"
    config.write_text(json.dumps({"steps": 30, "batch_size": 8, "lr": 1e-3, "image_size": SIZE,
                                  "val_fraction": 0.5, "score_stride": 4, "model": TINY}))
    run = tmp_path / "reward"
    assert wmpo(["train-reward", "--episodes", str(episodes), "--out", str(run), "--config", str(config)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0.0 < trained["tau"] < 1.0 and trained["final_loss"] < trained["first_loss"]
    assert (run / "model.safetensors").is_file() and (run / "reward.json").is_file()
    assert wmpo(["eval-reward", "--model", str(run), "--episodes", str(episodes), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 10 and report["tau"] == pytest.approx(trained["tau"])
    assert report["f1"] >= 0.8, report
    assert wmpo(["eval-reward", "--model", str(tmp_path / "missing"), "--episodes", str(episodes)]) == 2
    assert "reward.json" in capsys.readouterr().err


def test_reward_on_imagined_replays_scores_what_grpo_sees(tmp_path, capsys):
    """`eval-reward --world-model`: each episode's actions replayed from its first real frame, scored as GRPO does."""
    from test_rl_trainers_imagination import tiny_world_model

    from wmpo_core.data.frames import load_episodes
    from wmpo_core.world_model.imagine import ReplayPolicy, imagine

    episodes = tmp_path / "episodes"
    for seed in range(3):  # different lengths: the batch pads the shorter ones
        write_episode_bag(episodes, toy_task_episode(12 + 5 * seed, seed, success=seed % 2 == 0, image_size=SIZE))
    torch.manual_seed(0)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.5), **TINY)
    model.save_pretrained(tmp_path / "reward")
    wm = tiny_world_model()
    wm.save_pretrained(tmp_path / "wm")
    assert wmpo(["eval-reward", "--model", str(tmp_path / "reward"), "--episodes", str(episodes),
                 "--world-model", str(tmp_path / "wm"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["imagined"]
    assert report["episodes"] == 3 and report["tp"] + report["fp"] + report["fn"] + report["tn"] == 3
    # By hand, one episode at a time: its first real frame, then len - 1 imagined frames (seed = its index).
    for i, ep in enumerate(load_episodes(episodes, "agentview", SIZE)):
        alone = imagine(wm, ReplayPolicy(ep.actions[None, :-1], wm.chunk_size), ep.frames[None, :1], "",
                        len(ep.frames) - 1, [i])
        video = alone.frames[0, alone.context_frames - 1 :]
        assert len(video) == len(ep.frames)
        assert report["scores"][ep.episode_id] == pytest.approx(float(model.trajectory_scores([video])[0]), abs=1e-5)
    assert report["agreement"] == pytest.approx((report["tp"] + report["tn"]) / 3)


def test_hard_negative_mining_returns_the_highest_scoring_quarter():
    from wmpo_core.reward.train import mine_hard_negatives

    frames = [toy_task_episode(20, seed, success=False, image_size=SIZE) for seed in range(2)]
    negatives = [(i, end, 0) for i in range(2) for end in range(3, 20)]
    torch.manual_seed(0)
    model = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4), **TINY)
    model.classifier.train()
    hard = mine_hard_negatives(model, negatives, frames, pool=len(negatives), generator=torch.Generator().manual_seed(0),
                               batch_size=5)
    assert model.classifier.training  # mining scores in eval mode and restores the mode
    model.classifier.eval()
    with torch.no_grad():
        logits = [float(model.logits(gather_clips(frames[i].frames, [end], 4))[0]) for i, end, _ in negatives]
    top = {negatives[j] for j in np.argsort(logits)[::-1][: len(negatives) // 4]}
    assert len(hard) == len(negatives) // 4 and set(hard) == top


def test_training_on_imagined_replays_keeps_the_real_labels(tmp_path):
    from test_rl_trainers_imagination import tiny_world_model

    from wmpo_core.reward.train import imagined_replays, train_reward

    eps = [toy_task_episode(16, seed, success=seed % 2 == 0, image_size=SIZE) for seed in range(6)]
    for ep in eps:
        ep.success_step = 12 if ep.success else None
        ep.success_flags = np.arange(16) >= 12 if ep.success else np.zeros(16, bool)
    wm = tiny_world_model()
    replays = imagined_replays(wm, eps)
    assert [r.episode_id for r in replays] == [f"{e.episode_id}~imagined" for e in eps]
    for real, fake in zip(eps, replays, strict=True):
        assert fake.frames.shape == real.frames.shape and np.array_equal(fake.frames[0], real.frames[0])
        assert not np.array_equal(fake.frames[1:], real.frames[1:])  # imagined, not copied
        assert (fake.success, fake.success_step) == (real.success, real.success_step)
        assert np.array_equal(fake.success_flags, real.success_flags)
    cfg = RewardTrainConfig(steps=4, batch_size=4, image_size=SIZE, clip_len=4, stride=4, val_fraction=0.34,
                            mining_every=2, mining_pool=8, model=TINY)
    result = train_reward(eps, tmp_path / "r", cfg, world_model=wm, progress=False)
    # Training sees its real episodes and their replays; validation (for tau) too.
    n_val = len(json.loads((tmp_path / "r" / "training.json").read_text())["val_ids"])
    assert 2 <= n_val <= 4
    assert result["train_episodes"] == 2 * (6 - n_val) and result["val_episodes"] == 2 * n_val
    assert {"val_f1_real", "val_f1_imagined"} <= set(result)


def test_calibrate_reward_sets_tau_on_imagined_replays_and_keeps_the_input(tmp_path, capsys):
    """`calibrate-reward`: tau is the F1-best threshold on the imagined replays' scores, written to a copy."""
    from test_rl_trainers_imagination import tiny_world_model

    episodes = tmp_path / "episodes"
    for seed in range(4):
        write_episode_bag(episodes, toy_task_episode(12 + 3 * seed, seed, success=seed % 2 == 0, image_size=SIZE))
    torch.manual_seed(0)
    RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.999), **TINY).save_pretrained(tmp_path / "reward")
    tiny_world_model().save_pretrained(tmp_path / "wm")
    original = (tmp_path / "reward" / "reward.json").read_text()
    assert wmpo(["calibrate-reward", "--model", str(tmp_path / "reward"), "--world-model", str(tmp_path / "wm"),
                 "--episodes", str(episodes), "--out", str(tmp_path / "calibrated"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (tmp_path / "reward" / "reward.json").read_text() == original  # the input is untouched
    scores = json.loads((tmp_path / "calibrated" / "calibration.json").read_text())["scores"]
    from wmpo_core.data.frames import load_episodes

    outcome = {ep.episode_id: bool(ep.success) for ep in load_episodes(episodes, "agentview", SIZE)}
    assert sorted(outcome) == sorted(scores) and sum(outcome.values()) == 2
    tau, f1 = calibrate_tau([scores[k] for k in outcome], list(outcome.values()))
    assert record["tau_before"] == pytest.approx(0.999) and record["tau"] == pytest.approx(tau)
    assert record["f1"] == pytest.approx(f1) and record["f1"] >= record["f1_before"]
    assert record["auc"] == pytest.approx(roc_auc([scores[k] for k in outcome], list(outcome.values())))
    # eval-reward on the same replays (same seeds) agrees with what calibration measured
    assert wmpo(["eval-reward", "--model", str(tmp_path / "calibrated"), "--episodes", str(episodes),
                 "--world-model", str(tmp_path / "wm"), "--json"]) == 0
    imagined = json.loads(capsys.readouterr().out)["imagined"]
    assert imagined["tau"] == pytest.approx(tau) and imagined["f1"] == pytest.approx(f1)
    assert imagined["scores"] == pytest.approx(scores, abs=1e-5)
    assert imagined["auc"] == pytest.approx(record["auc"], abs=1e-6)
    # refused: writing over the input, and episodes of one outcome only
    assert wmpo(["calibrate-reward", "--model", str(tmp_path / "reward"), "--world-model", str(tmp_path / "wm"),
                 "--episodes", str(episodes), "--out", str(tmp_path / "reward")]) == 2
    assert "must differ" in capsys.readouterr().err
    only = tmp_path / "only_failures"
    write_episode_bag(only, toy_task_episode(12, 7, success=False, image_size=SIZE))
    assert wmpo(["calibrate-reward", "--model", str(tmp_path / "reward"), "--world-model", str(tmp_path / "wm"),
                 "--episodes", str(only), "--out", str(tmp_path / "c2")]) == 2
    assert "successes and failures" in capsys.readouterr().err and not (tmp_path / "c2").exists()


def test_train_calibrated_reward_calibrates_on_the_policys_episodes_when_they_hold_both_outcomes(tmp_path, capsys):
    """The loop's reward step: real-only training, then tau re-chosen on imagined replays of the
    policy's own episodes when they hold a success and a failure, else of all training episodes
    (and it says so), else not at all (every episode succeeded)."""
    from test_rl_trainers_imagination import tiny_world_model

    from wmpo_core.pipeline.recipe import Recipe
    from wmpo_core.pipeline.steps import train_calibrated_reward

    def folder(name: str, outcomes: list[bool], first_seed: int):
        path = tmp_path / name
        for i, success in enumerate(outcomes):
            write_episode_bag(path, toy_task_episode(16, first_seed + i, success=success, image_size=SIZE))
        return path

    data = folder("data", [True, False, True, False], 0)
    own = folder("own", [True, False], 10)
    own_failures = folder("own_failures", [False, False], 20)
    successes = folder("successes", [True, True], 30)  # negatives from their early frames
    tiny_world_model().save_pretrained(tmp_path / "wm")
    config = tmp_path / "reward.json"
    config.write_text(json.dumps({"batch_size": 4, "image_size": SIZE, "clip_len": 4, "stride": 4,
                                  "val_fraction": 0.5, "score_stride": 4, "model": TINY}))

    def ids(path):
        return sorted(json.loads((path / "calibration.json").read_text())["scores"])

    from wmpo_core.data.frames import load_episodes

    def episode_ids(path):
        return sorted(ep.episode_id for ep in load_episodes(path, "agentview", SIZE))

    recipe = Recipe(task="lift", reward_config=str(config), calibration_min_outcomes=1)

    def train(episodes, out, calibrate_on=()):
        inputs = {"episodes": episodes, "world_model": tmp_path / "wm", "calibrate_on": list(calibrate_on),
                  "steps": 2, "recipe": recipe}
        return train_calibrated_reward(inputs, out)

    r = train(data, tmp_path / "a", calibrate_on=[own])
    assert r["run"] == str(tmp_path / "a" / "calibrated") and r["calibrated_on"] == [str(own)], r
    assert r["calibration_episodes"] == 2 and ids(tmp_path / "a" / "calibrated") == episode_ids(own)
    assert r["imagined_auc"] in (0.0, 0.5, 1.0)  # one success against one failure
    out = capsys.readouterr().out
    assert "calibrating on all training episodes" not in out
    # a ranking of imagined replays below 0.75 is called out: GRPO's reward would be mostly noise
    assert ("imagination barely shows the outcome" in out) == (r["imagined_auc"] < 0.75), out

    r = train(data, tmp_path / "b", calibrate_on=[own_failures])
    assert "0 of 2 of the policy's episodes succeeded (fewer than 1 of each outcome); calibrating on all training" \
        in capsys.readouterr().out
    assert r["run"] == str(tmp_path / "b" / "calibrated") and r["calibrated_on"] == [str(data)], r
    assert r["calibration_episodes"] == 4 and ids(tmp_path / "b" / "calibrated") == episode_ids(data)

    # With the default minimum (5 of each outcome), one success and one failure are too few to choose on.
    recipe = Recipe(task="lift", reward_config=str(config))
    r = train(data, tmp_path / "d", calibrate_on=[own])
    assert ("1 of 2 of the policy's episodes succeeded (fewer than 5 of each outcome); calibrating on all "
            "training episodes") in capsys.readouterr().out
    assert r["calibrated_on"] == [str(data)] and r["calibration_episodes"] == 4, r

    # The recipe's calibration rule reaches the threshold: balanced accuracy chooses on the same replay scores.
    recipe = Recipe(task="lift", reward_config=str(config), calibration_rule="balanced")
    r = train(data, tmp_path / "e")
    record = json.loads((tmp_path / "e" / "calibrated" / "calibration.json").read_text())
    labels = {ep.episode_id: ep.success for ep in load_episodes(data, "agentview", SIZE)}
    names = sorted(record["scores"])
    want, _ = calibrate_tau([record["scores"][n] for n in names], [labels[n] for n in names], rule="balanced")
    assert r["rule"] == record["rule"] == "balanced" and r["tau"] == pytest.approx(want), (r, record)

    r = train(successes, tmp_path / "c")
    assert r["run"] == str(tmp_path / "c" / "run") and "calibration needs both outcomes" in r["calibration_skipped"]
    assert not (tmp_path / "c" / "calibrated").exists()


def test_train_reward_on_out_of_fold_replays(tmp_path, capsys):
    """`train-reward --imagined-by WM EPISODES`: each world model imagines only episodes it did not train on
    (its episodes.json); every replay lands in its real episode's split; a world model asked to imagine one of
    its own training episodes is refused by name, before any training."""
    from test_rl_trainers_imagination import tiny_world_model

    from wmpo_core.data.frames import load_episodes
    from wmpo_core.reward.train import out_of_fold_replays

    folds = {"a": tmp_path / "fold_a", "b": tmp_path / "fold_b"}
    for seed in range(8):
        write_episode_bag(folds["a" if seed % 2 else "b"],
                          toy_task_episode(12 + seed, seed, success=seed % 4 < 2, image_size=SIZE))
    ids = {k: sorted(p.name for p in f.iterdir()) for k, f in folds.items()}
    for k in folds:  # world model k trained on fold k (what its run's episodes.json says)
        tiny_world_model().save_pretrained(tmp_path / f"wm_{k}")
        (tmp_path / f"wm_{k}" / "episodes.json").write_text(json.dumps({"init": None, "episodes": ids[k]}))
    cfg = tmp_path / "reward.json"
    cfg.write_text(json.dumps({"steps": 3, "batch_size": 4, "image_size": SIZE, "clip_len": 4, "stride": 4,
                               "val_fraction": 0.25, "mining_every": 2, "mining_pool": 8, "model": TINY}))
    common = ["train-reward", "--episodes", str(folds["a"]), str(folds["b"]), "--config", str(cfg)]
    assert wmpo([*common, "--out", str(tmp_path / "r"), "--imagined-by", str(tmp_path / "wm_a"), str(folds["b"]),
                 "--imagined-by", str(tmp_path / "wm_b"), str(folds["a"])]) == 0
    capsys.readouterr()
    training = json.loads((tmp_path / "r" / "training.json").read_text())
    n_val = len(training["val_ids"])
    assert training["train_episodes"] == 2 * (8 - n_val) and training["val_episodes"] == 2 * n_val
    # Each replay is made by the other fold's world model: the same frames as imagining them directly.
    eps_b = load_episodes(folds["b"], "agentview", SIZE)
    direct = out_of_fold_replays([(tmp_path / "wm_a", eps_b)], seed=0)
    assert [r.episode_id for r in direct] == [f"{e}~imagined" for e in ids["b"]]
    # Refused: a world model imagining its own fold.
    assert wmpo([*common, "--out", str(tmp_path / "bad"), "--imagined-by", str(tmp_path / "wm_a"),
                 str(folds["a"])]) == 2
    assert "trained on 4 of the episodes" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_recipe_with_a_success_head_trains_it_in_the_reward_step_and_grpo_scores_with_it(tmp_path):
    """The recipe's success_head_config: the reward step also trains the world model's success head on its
    episodes (a real `wmpo train-success-head`), and the GRPO step's command takes it instead of --reward."""
    from test_rl_trainers_imagination import tiny_world_model

    from wmpo_core.pipeline.recipe import Recipe, load_recipe
    from wmpo_core.pipeline.runner import MARKER
    from wmpo_core.pipeline.steps import reward_args_of, train_calibrated_reward
    from wmpo_core.world_model.success_head import load_success_head

    data = tmp_path / "data"
    for i in range(6):
        write_episode_bag(data, toy_task_episode(16, i, success=i % 2 == 0, image_size=SIZE))
    tiny_world_model().save_pretrained(tmp_path / "wm")
    config = tmp_path / "reward.json"
    config.write_text(json.dumps({"batch_size": 4, "image_size": SIZE, "clip_len": 4, "stride": 4,
                                  "val_fraction": 0.5, "score_stride": 4, "model": TINY}))
    head_config = tmp_path / "head.json"
    head_config.write_text(json.dumps({"steps": 3, "batch_size": 8, "channels": 8, "hidden_size": 16}))
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps({"reward_config": "reward.json", "success_head_config": "head.json"}))
    recipe = load_recipe("lift", recipe_file)
    assert recipe.success_head_config == str(head_config)
    out = tmp_path / "reward"
    inputs = {"episodes": data, "world_model": tmp_path / "wm", "calibrate_on": [], "steps": 2, "recipe": recipe}
    result = train_calibrated_reward(inputs, out)
    head, info = load_success_head(result["success_head"], tmp_path / "wm")
    assert result["success_head"] == str(out / "success_head") and result["success_head_tau"] == info.tau
    assert info.config["steps"] == 3 and info.rule == "final"
    (out / MARKER).write_text(json.dumps(result))
    assert reward_args_of(out) == ["--success-head", str(out / "success_head")]
    # Without the field: the video classifier, as before.
    plain = train_calibrated_reward(inputs | {"recipe": Recipe(task="lift", reward_config=str(config))},
                                    tmp_path / "plain")
    assert "success_head" not in plain and not (tmp_path / "plain" / "success_head").exists()
    (tmp_path / "plain" / MARKER).write_text(json.dumps(plain))
    assert reward_args_of(tmp_path / "plain") == ["--reward", plain["run"]]
