"""World-model training on 2 processes (accelerate on gloo, as `accelerate launch` runs it on CPU).

Real tiny autoencoder and video transformer, real DDP all-reduce, real checkpoints and resume.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from test_rl_distributed import WORLD, free_port, leave, start_rank
from test_world_model import SIZE, TINY_TRANSFORMER

from wmpo_core.world_model.model import WorldModel
from wmpo_core.world_model.synthetic import moving_square_episodes
from wmpo_core.world_model.train import WorldModelTrainConfig, train_world_model

CONFIG = WorldModelTrainConfig(steps=4, batch_size=2, lr=1e-3, checkpoint_every=2, image_size=SIZE,
                               num_inference_steps=2, transformer=TINY_TRANSFORMER, vae_steps=2, vae_batch_size=4,
                               tiny_vae={"block_out_channels": [8, 8, 16], "latent_channels": 4})


def _worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = start_rank(rank, port)
    episodes = moving_square_episodes(4, 24, seed=0, image_size=SIZE)
    out = os.path.join(out_dir, "full")
    full = train_world_model(episodes, out, CONFIG, progress=False)  # trains its autoencoder first
    vae = os.path.join(out, "vae_trained")
    cut = train_world_model(episodes, os.path.join(out_dir, "cut"), CONFIG, vae_path=vae, stop_after=2,
                            progress=False)
    rest = train_world_model(episodes, os.path.join(out_dir, "cut"), CONFIG, vae_path=vae, progress=False)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"full": full["losses"], "cut": cut["losses"], "rest": rest["losses"]}, f)
    leave(accelerator)


@pytest.mark.timeout(600)
def test_two_process_training_draws_per_rank_batches_and_resumes_exactly(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for losses in ranks:
        assert len(losses["full"]) == 4 and len(losses["cut"]) == 2
        # Each rank's interrupted and resumed batches are the ones it drew uninterrupted.
        assert losses["cut"] + losses["rest"] == losses["full"]
    assert ranks[0]["full"] != ranks[1]["full"], "both ranks trained on the same windows and noise"
    # One autoencoder, one saved model; the resumed run ends with the uninterrupted run's weights.
    assert (tmp_path / "full" / "vae_trained" / "config.json").is_file()
    assert json.loads((tmp_path / "full" / "trainer_state.json").read_text())["step"] == 4
    a, b = WorldModel.from_pretrained(tmp_path / "full"), WorldModel.from_pretrained(tmp_path / "cut")
    for (name, pa), pb in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"resumed weights differ at {name}"
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
