"""`wmpo diagnose-imagination`: the ladder's rungs build the videos they claim, AUCs with bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_rl_trainers_imagination import tiny_world_model

from wmpo_core.cli import main as wmpo
from wmpo_core.data.frames import load_episodes
from wmpo_core.reward.ladder import RUNGS, bootstrap_auc, branched, chunkwise, outcome_steps, region_mask
from wmpo_core.reward.model import RewardModel, RewardSettings
from wmpo_core.world_model.imagine import ReplayPolicy, imagine
from wmpo_core.world_model.synthetic import toy_task_episode, write_episode_bag

SIZE = 32
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def test_bootstrap_auc_on_hand_made_scores():
    assert bootstrap_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False], resamples=200) == (1.0, 1.0, 1.0)
    auc, lo, hi = bootstrap_auc([0.9, 0.2, 0.5, 0.1, 0.6, 0.3], [True, True, True, False, False, False], resamples=500)
    # pairs: 0.9 beats all 3, 0.2 beats 0.1 only, 0.5 beats 0.1 and 0.3 -> 6 of 9
    assert auc == pytest.approx(6 / 9) and 0.0 <= lo < auc < hi <= 1.0
    assert bootstrap_auc([0.5, 0.4], [True, True]) == (None, None, None)


def test_region_mask_and_outcome_steps():
    rows, cols = region_mask(64, (0.25, 0.5, 0.75, 1.0))
    assert (rows, cols) == (slice(32, 64), slice(16, 48))
    with pytest.raises(ValueError, match="region"):
        region_mask(64, (0.5, 0.2, 0.4, 0.9))
    eps = [toy_task_episode(20, s, success=s < 2) for s in range(3)]
    eps[0].success_step, eps[1].success_step = 10, 14
    eps[2].frames = eps[2].frames[:11]
    eps[2].actions = eps[2].actions[:11]
    # Successes at their own step; the failure at the successes' median (12), clamped to its last frame (10).
    assert outcome_steps(eps) == [10, 14, 10]


def test_chunkwise_and_branched_rungs_match_imagination_by_hand():
    wm = tiny_world_model()
    c, k = wm.context_frames, wm.chunk_size
    eps = [toy_task_episode(15 + 3 * s, s, success=s % 2 == 0, image_size=SIZE) for s in range(3)]
    per_chunk = chunkwise(wm, eps, seed=5, batch_size=4)  # several batches
    for e, ep in enumerate(eps):
        assert per_chunk[e].shape == ep.frames.shape and np.array_equal(per_chunk[e][:c], ep.frames[:c])
    # The second chunk of episode 1 alone, from its real context: job index = 4 chunks of ep 0 + 1.
    t = c + k
    alone = imagine(wm, ReplayPolicy(eps[1].actions[None, t - 1 : t - 1 + k], k), eps[1].frames[None, t - c : t], "", k,
                    [5 + 5]).imagined_frames[0]
    assert np.array_equal(per_chunk[1][t : t + k], alone)
    assert not np.array_equal(per_chunk[1][c:], eps[1].frames[c:])  # predicted, not copied

    at = [9, 6, 12]
    forks = branched(wm, eps, at, seed=3, batch_size=2)
    for e, (ep, b) in enumerate(zip(eps, at, strict=True)):
        assert forks[e].shape == ep.frames.shape and np.array_equal(forks[e][:b], ep.frames[:b])
    b = at[2]  # episode 2 runs alone in the second batch, seed 3 + 2
    alone = imagine(wm, ReplayPolicy(eps[2].actions[None, b - 1 : -1], k), eps[2].frames[None, b - c : b], "",
                    len(eps[2].frames) - b, [5]).imagined_frames[0]
    assert np.array_equal(forks[2][b:], alone)


def test_diagnose_imagination_command(tmp_path, capsys):
    episodes = tmp_path / "episodes"
    for seed in range(6):
        ep = toy_task_episode(20, seed, success=seed % 2 == 0, image_size=SIZE)
        write_episode_bag(episodes, ep)
    torch.manual_seed(0)
    reward = RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.5), **TINY)
    reward.save_pretrained(tmp_path / "reward")
    tiny_world_model().save_pretrained(tmp_path / "wm")
    out = tmp_path / "ladder.json"
    args = ["diagnose-imagination", "--world-model", str(tmp_path / "wm"), "--reward", str(tmp_path / "reward"),
            "--episodes", str(episodes), "--resamples", "200", "--region", "0.25,0.25,0.75,0.75"]
    assert wmpo(args + ["--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "(a) real video" in table and "(e) full replay" in table
    report = json.loads(out.read_text())
    assert list(report["rungs"]) == list(RUNGS) and report["episodes"] == 6 and report["successes"] == 3
    real = load_episodes(episodes, "agentview", SIZE)
    by_hand = reward.trajectory_scores([ep.frames for ep in real])
    for ep, score in zip(real, by_hand, strict=True):
        assert report["rungs"]["a_real"]["scores"][ep.episode_id] == pytest.approx(float(score), abs=1e-5)
    for rung in report["rungs"].values():
        assert rung["auc"] is not None and rung["ci"][0] <= rung["auc"] <= rung["ci"][1]
    # The AUC split by failures the reward scores >= 0.5 on real video ("near"), computed here by hand.
    labels = {ep.episode_id: bool(ep.success) for ep in real}
    real_scores = report["rungs"]["a_real"]["scores"]
    near = {e for e, ok in labels.items() if not ok and real_scores[e] >= 0.5}
    assert report["settings"]["near_failures"] == len(near)
    for rung in report["rungs"].values():
        sc = rung["scores"]
        for key, failures in (("auc_clear_failures", [e for e in labels if not labels[e] and e not in near]),
                              ("auc_near_failures", sorted(near))):
            wins = [float(sc[s] > sc[f]) + 0.5 * float(sc[s] == sc[f])
                    for s in labels if labels[s] for f in failures]
            assert rung[key] == (pytest.approx(sum(wins) / len(wins)) if wins else None), key
    assert "AUC vs clear/near failures" in table
    # The "final" trajectory rule, by hand: only each video's last clip, AUC over all success/failure pairs.
    last = {ep.episode_id: float(reward.clip_scores(ep.frames)[1][-1]) for ep in real}
    wins = [float(last[s] > last[f]) + 0.5 * float(last[s] == last[f])
            for s in labels if labels[s] for f in labels if not labels[f]]
    by_rule = report["rungs"]["a_real"]["auc_by_rule"]
    assert by_rule["final"]["auc"] == pytest.approx(sum(wins) / len(wins))
    assert by_rule["any"]["auc"] == pytest.approx(report["rungs"]["a_real"]["auc"])  # the model's own rule
    assert "AUC any/final clip" in table and report["settings"]["rule"] == "any"
    fid = report["fidelity"]
    assert set(fid) == {"c_chunk", "c_repeat_last", "e_replay"} and len(fid["e_replay"]["frame"]["psnr"]) >= 4
    # The no-motion reference, by hand: each chunk after the context repeats the frame before it.
    from wmpo_core.reward.ladder import repeat_last

    c, k = tiny_world_model().context_frames, tiny_world_model().chunk_size
    copies = [repeat_last(ep.frames, c, k) for ep in real]
    assert all(np.array_equal(v[t], ep.frames[c - 1 + ((t - c) // k) * k]) for v, ep in zip(copies, real, strict=True)
               for t in range(c, len(ep.frames)))
    def db(errors):  # PSNR of a pooled mean squared error
        return 10 * np.log10(255.0**2 / np.mean(errors))

    def sq(a, b):
        return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))

    by_hand = np.mean([db(sq(v[c:], ep.frames[c:])) for v, ep in zip(copies, real, strict=True)])
    assert fid["c_repeat_last"]["frame"]["psnr"][0] == pytest.approx(by_hand, rel=1e-6)
    # By position in the chunk: the error of every chunk's first frame pooled over episodes, by hand.
    first = db(np.concatenate([sq(v[c::k], ep.frames[c::k]) for v, ep in zip(copies, real, strict=True)]))
    assert len(fid["c_repeat_last"]["in_chunk_psnr"]) == k and len(fid["c_chunk"]["in_chunk_psnr"]) == k
    assert fid["c_repeat_last"]["in_chunk_psnr"][0] == pytest.approx(first, rel=1e-6)
    assert "PSNR by position in the chunk" in table
    assert fid["c_chunk"]["region"]["psnr"][0] != fid["c_chunk"]["frame"]["psnr"][0]
    # Nothing is overwritten; bad input is named.
    before = out.read_text()
    assert wmpo(args + ["--json", str(out)]) == 2 and "exists" in capsys.readouterr().err
    assert out.read_text() == before
    assert wmpo(args[:-2] + ["--region", "0.5,0.5,0.4,0.9"]) == 2 and "region" in capsys.readouterr().err
    assert wmpo(args[:-2] + ["--region", "a,b"]) == 2 and "region" in capsys.readouterr().err
    assert wmpo(args + ["--branch-chunks", "0"]) == 2 and "branch-chunks" in capsys.readouterr().err
    assert wmpo(args + ["--rungs", "z_fake"]) == 2 and "rungs" in capsys.readouterr().err
