"""The 256 px world-model recipe (`wmpo_core/world_model/configs/sim256.json`): the paper's settings, and a
pretrained AutoencoderKL directory in the diffusers layout (4 latent channels, 8x downsampling, as
the SDXL VAE) as its frozen autoencoder, through one real training step on the CPU (transformer shrunk)
in the recipe's bf16 mixed precision with gradient checkpointing turned on from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from test_world_model import _TrainingWatch

from wmpo_core.cli import main as wmpo
from wmpo_core.world_model.imagine import ReplayPolicy, imagine
from wmpo_core.world_model.model import WorldModel
from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag
from wmpo_core.world_model.train import WorldModelTrainConfig
from wmpo_core.world_model.transformer import SpatioTemporalBlock

CONFIG = Path(__file__).resolve().parents[1] / "wmpo_core" / "world_model" / "configs" / "sim256.json"
SDXL_SCALING = 0.13025


def _sdxl_like_vae(path: Path) -> AutoencoderKL:
    """A miniature AutoencoderKL saved as a pretrained one is: 4 blocks (x8 downsampling), 4 latent channels."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                        latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=256,
                        scaling_factor=SDXL_SCALING)
    vae.save_pretrained(path, safe_serialization=True)
    return vae


def test_the_recipe_holds_the_papers_settings():
    cfg = WorldModelTrainConfig.from_json(CONFIG)
    assert cfg.image_size == 256 and cfg.prediction_type == "epsilon" and cfg.context_noise_step == 50
    assert (cfg.lr, cfg.grad_clip, cfg.ema_decay) == (1e-4, 0.1, 0.9999)
    t = cfg.transformer
    assert (t["patch_size"], t["context_frames"], t["chunk_size"]) == (2, 4, 8)
    assert len(cfg.tiny_vae["block_out_channels"]) == 4  # without --vae: an 8x autoencoder is trained first
    # bf16 as the paper's OpenSora training; with checkpointing, unlike the paper's batch of 4 per GPU: the
    # batch of 8 would keep an estimated 60+ GiB of activations beside 17 GiB of fp32 weights, AdamW and EMA
    assert cfg.mixed_precision == "bf16" and cfg.grad_checkpointing


def test_a_pretrained_autoencoder_directory_starts_a_256_px_world_model(tmp_path):
    vae_dir = tmp_path / "sdxl-vae"
    vae = _sdxl_like_vae(vae_dir)
    assert (vae_dir / "config.json").is_file() and (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    for s in range(2):
        write_episode_bag(tmp_path / "episodes", moving_square_episode(14, s, 256))
    recipe = json.loads(CONFIG.read_text())
    recipe["transformer"] |= {"hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}  # CPU-sized
    recipe |= {"batch_size": 1, "checkpoint_every": 1, "log_every": 1, "num_inference_steps": 2}
    (tmp_path / "config.json").write_text(json.dumps(recipe))

    run = tmp_path / "wm"
    watch = _TrainingWatch((SpatioTemporalBlock,))
    try:
        assert wmpo(["train-world-model", "--episodes", str(tmp_path / "episodes"), "--out", str(run),
                     "--config", str(tmp_path / "config.json"), "--vae", str(vae_dir), "--steps", "1"]) == 0
    finally:
        watch.close()
    # the step ran in bf16 with fp32 weights and AdamW state, its one block recomputed in the backward pass
    assert watch.output_dtypes["Linear"] == {torch.bfloat16} and watch.block_calls == 2
    assert watch.param_dtypes == watch.state_dtypes == {torch.float32}
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["finished"] and np.isfinite(state["final_loss"])
    assert not (run / "vae_trained").exists()  # the given autoencoder was used, none trained

    wm = WorldModel.from_pretrained(run)
    assert wm.transformer.config.latent_size == 32 and wm.transformer.config.latent_channels == 4  # 256 / 8
    assert wm.transformer.config.patch_size == 2 and (wm.context_frames, wm.chunk_size) == (4, 8)
    assert wm.noise_scheduler.config.prediction_type == "epsilon" and wm.settings.image_size == 256
    # the autoencoder is the pretrained one, unchanged (frozen), with its own latent scale
    assert wm.vae.config.scaling_factor == SDXL_SCALING
    saved = load_file(str(run / "vae" / "diffusion_pytorch_model.safetensors"))
    for name, weight in vae.state_dict().items():
        assert torch.equal(saved[name], weight), name
    # latents are the autoencoder's posterior mean times its scale (unit variance for the noise schedule)
    ep = moving_square_episode(14, 5, 256)
    with torch.no_grad():
        direct = vae.encode(torch.from_numpy(ep.frames[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mode()
    torch.testing.assert_close(wm.encode(torch.from_numpy(ep.frames[None, :2]))[0], direct * SDXL_SCALING)
    # and the model imagines 256 px frames
    out = imagine(wm, ReplayPolicy(ep.actions[None, :8], 8), ep.frames[None, :1], "", 8, seeds=[0])
    assert out.frames.shape == (1, 4 + 8, 256, 256, 3) and out.frames.dtype == np.uint8
