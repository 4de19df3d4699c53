"""Reward-model training on 2 processes (accelerate on gloo, as `accelerate launch` runs it on CPU).

Real tiny VideoMAE classifier, real DDP all-reduce, the model saved once as safetensors.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from test_reward import SIZE, TINY
from test_rl_distributed import WORLD, free_port, leave, start_rank

from wmpo_core.reward.model import RewardModel
from wmpo_core.reward.train import RewardTrainConfig, train_reward
from wmpo_core.world_model.synthetic import toy_task_episode

CONFIG = RewardTrainConfig(steps=3, batch_size=4, lr=1e-3, val_fraction=0.5, image_size=SIZE, clip_len=8,
                           score_stride=4, model=TINY)


def episodes():
    return [toy_task_episode(16, seed, success=seed % 2 == 0, image_size=SIZE) for seed in range(6)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = start_rank(rank, port)
    result = train_reward(episodes(), os.path.join(out_dir, "reward"), CONFIG, progress=False)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    leave(accelerator)


@pytest.mark.timeout(600)
def test_two_process_reward_training_combines_ranks_and_saves_once(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"], "both ranks trained on the same clips"
    assert ranks[0]["tau"] == ranks[1]["tau"]  # the same weights on every rank give the same threshold
    saved = RewardModel.from_pretrained(tmp_path / "reward")
    assert saved.settings.tau == pytest.approx(ranks[0]["tau"])
    assert json.loads((tmp_path / "reward" / "training.json").read_text())["first_loss"] == ranks[0]["first_loss"]

    # One process with the same config draws rank 0's batches: same first loss, other final weights,
    # because the two-process steps also carried rank 1's gradients.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran
    try:
        single = train_reward(episodes(), tmp_path / "single", CONFIG, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert single["first_loss"] == pytest.approx(ranks[0]["first_loss"], rel=1e-5)
    one = RewardModel.from_pretrained(tmp_path / "single").classifier.state_dict()
    two = saved.classifier.state_dict()
    assert any(not torch.allclose(one[k], two[k]) for k in one)
