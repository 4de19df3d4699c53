"""Baselines: online GRPO in the real MuJoCo simulator under a budget, DPO on real MCAP episode bags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_rl_trainers_imagination import SIZE, K, tiny_policy

from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS, DPOTrainConfig, SimGRPOConfig
from wmpo_core.rl.dpo import DPOConfig
from wmpo_core.rl.grpo import GRPOConfig
from wmpo_core.rl.rollouts import simulate_trajectories
from wmpo_core.rl.trainer_imagination import read_log


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; the machine's cores are shared with other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingEnv:
    """The real simulator, counting its episode resets."""

    def __init__(self, env):
        self.env = env
        self.resets: list[int] = []

    def reset(self, seed=None):
        self.resets.append(seed)
        return self.env.reset(seed=seed)

    def __getattr__(self, name):
        return getattr(self.env, name)


@pytest.mark.sim
def test_online_grpo_stops_exactly_at_the_budget(tmp_path):
    from wmpo_core.rl.trainer_sim import make_policy_env, train_grpo_sim

    policy = tiny_policy()
    env = CountingEnv(make_policy_env("lift", policy))
    config = SimGRPOConfig(grpo=GRPOConfig(group_size=2, learning_rate=1e-4), budget=6, groups_per_iteration=2,
                           max_steps=2 * K)
    try:
        result = train_grpo_sim(policy, "lift", tmp_path / "run", config, env=env, progress=False)
        assert len(env.resets) == 6 and result["real_trajectories"] == 6
        # What the simulator rollout recorded is what the policy sampled: training log-probs agree.
        rollout = simulate_trajectories(env, policy, [POLICY_ROLLOUT_SEEDS.start], 1, 1.6,
                                        torch.Generator().manual_seed(3), max_steps=K + 1)
    finally:
        env.env.close()
    batch = rollout.batch
    assert batch.num_rows == 2 and float(batch.mask.sum()) == (K + 1) * 7  # 1 step of the 2nd chunk ran
    assert batch.images["agentview"].shape == (2, 64, 64, 3)
    with torch.no_grad():
        logp = policy.log_prob(batch.observations(policy), batch.action_tokens, 1.6)
    torch.testing.assert_close(logp, batch.logp_old, atol=1e-4, rtol=0)
    assert env.resets[:6] == [POLICY_ROLLOUT_SEEDS.start + i // 2 for i in range(6)]
    rows = read_log(tmp_path / "run")
    assert [r["real_trajectories"] for r in rows] == [4.0, 6.0]  # 2 groups, then the 1 group left in the budget
    manifest = json.loads((tmp_path / "run" / "policy" / "manifest.json").read_text())
    assert manifest["parent"] == "base-0"
    assert manifest["training_data"]["budget"] == 6 and manifest["training_data"]["real_trajectories"] == 6
    with pytest.raises(ValueError, match="multiple of the group size"):
        SimGRPOConfig(grpo=GRPOConfig(group_size=4), budget=6).validate()


def test_dpo_on_recorded_episodes_increases_the_margin(tmp_path):
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.rl.rollouts import trajectories_from_episodes
    from wmpo_core.rl.trainer_dpo import train_dpo
    from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

    for i in range(4):
        write_episode_bag(tmp_path / "episodes", moving_square_episode(10, seed=i, image_size=SIZE, success=i % 2 == 0))
    (tmp_path / "episodes" / "broken").mkdir()  # an unreadable bag is skipped, not fatal
    policy = tiny_policy()
    trajectories, ids = trajectories_from_episodes(episode_dirs(tmp_path / "episodes"), policy)
    assert trajectories.num_trajectories == 4 and len(ids) == 4
    assert trajectories.num_rows == 4 * 3  # 10 steps in chunks of 4
    assert float(trajectories.mask[2].sum()) == 2 * 7  # the last chunk executed 2 of its 4 steps
    config = DPOTrainConfig(dpo=DPOConfig(beta=0.1, learning_rate=3e-4), budget=4, group_size=1, epochs=3,
                            pairs_per_step=4)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    result = train_dpo(policy, trajectories, tmp_path / "run", config, episode_ids=ids, progress=False)
    assert result["pairs"] == 4 and result["steps"] == 3
    assert result["initial_margin"] == pytest.approx(0.0, abs=1e-6)
    assert result["final_margin"] > 0.05, result
    rows = read_log(tmp_path / "run")
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    manifest = json.loads((tmp_path / "run" / "policy" / "manifest.json").read_text())
    assert manifest["parent"] == "base-0" and manifest["training_data"]["num_episodes"] == 4
    changed = any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert changed and np.isfinite(result["final_margin"])
