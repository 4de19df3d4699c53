"""`wmpo train-vae / train-world-model / eval-world-model / imagine` end to end on real MCAP bags (tiny sizes)."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from wmpo_core.cli import main as wmpo
from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

SIZE = 32
CONFIG = {
    "steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "image_size": SIZE, "num_inference_steps": 2,
    "vae_steps": 3, "vae_batch_size": 4, "tiny_vae": {"block_out_channels": [8, 8, 16]},
    "transformer": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                    "context_frames": 2, "chunk_size": 4},
}


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    for name, seeds in (("demos", range(3)), ("rollouts", range(10, 12)), ("heldout", range(20, 22))):
        for s in seeds:
            write_episode_bag(root / name, moving_square_episode(20, s, SIZE, success=s % 2 == 0))
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


def test_train_align_evaluate_imagine(bags, tmp_path, capsys):
    cfg = str(bags / "config.json")
    assert wmpo(["train-vae", "--episodes", str(bags / "demos"), "--out", str(tmp_path / "vae"), "--config", cfg]) == 0
    vae_stats = json.loads(capsys.readouterr().out)
    assert vae_stats["steps"] == 3 and (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    run = tmp_path / "wm"
    assert wmpo(["train-world-model", "--episodes", str(bags / "demos"), "--out", str(run), "--config", cfg,
                 "--vae", str(tmp_path / "vae")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["step"] == 3
    for part in ("world_model.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "sampler/scheduler_config.json", "vae/config.json"):
        assert (run / part).is_file(), part
    assert list((run / "tb").iterdir()), "no TensorBoard events"

    aligned = tmp_path / "aligned"
    # Alignment with the task-region loss weighting (beyond the paper), as a recipe may ask for it.
    (tmp_path / "region.json").write_text(json.dumps({**CONFIG, "loss_region": [0.25, 0.25, 0.75, 0.75],
                                                      "loss_region_weight": 4.0}))
    assert wmpo(["train-world-model", "--episodes", str(bags / "rollouts"), "--out", str(aligned), "--config",
                 str(tmp_path / "region.json"), "--init", str(run), "--steps", "2"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["final_loss"])
    assert json.loads((aligned / "train_config.json").read_text())["loss_region_weight"] == 4.0
    # Resuming with a different architecture is refused with the field named, and nothing is overwritten.
    other = json.loads(json.dumps(CONFIG))
    other["transformer"]["hidden_size"] = 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert wmpo(["train-world-model", "--episodes", str(bags / "demos"), "--out", str(run),
                 "--config", str(tmp_path / "other.json"), "--vae", str(tmp_path / "vae")]) == 2
    assert "transformer" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before

    assert wmpo(["eval-world-model", "--model", str(aligned), "--model", str(run), "--episodes",
                 str(bags / "heldout"), "--chunks", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_chunk"]) == {"model:aligned", "model:wm", "repeat_last", "shuffled_actions:aligned",
                                        "shuffled_actions:wm"}
    assert len(report["per_frame"]["model:aligned"]["psnr"]) == 8
    assert any("LPIPS" in n for n in report["notes"])

    # The ablations, one command: the noisy pretraining above is reused, the clean-context variant is
    # pretrained and aligned here, every variant is scored on the same held-out episodes.
    abl = tmp_path / "ablation"
    assert wmpo(["ablate-world-model", "--demos", str(bags / "demos"), "--rollouts", str(bags / "rollouts"),
                 "--heldout", str(bags / "heldout"), "--out", str(abl), "--pretrained", str(run),
                 "--align-steps", "2", "--chunks", "2", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["per_chunk"]) == {f"{kind}:{v}" for kind in ("model", "shuffled_actions")
                                        for v in ("full", "no_noisy_context", "no_alignment")} | {"repeat_last"}
    assert len(result["per_chunk"]["model:full"]["psnr"]) == 2 and len(result["episodes"]) == 2
    assert result["variants"]["no_alignment"] == str(run)
    assert json.loads((abl / "aligned_clean" / "world_model.json").read_text())["context_noise_step"] == 0
    assert json.loads((abl / "aligned" / "world_model.json").read_text())["context_noise_step"] == 50
    assert json.loads((abl / "pretrain_clean" / "episodes.json").read_text())["init"] is None
    assert json.loads((abl / "aligned_clean" / "episodes.json").read_text())["init"] == str(abl / "pretrain_clean")
    # Finished variants are reused: a second run trains nothing and prints the same table.
    stamp = (abl / "aligned_clean" / "world_model.json").stat().st_mtime_ns
    assert wmpo(["ablate-world-model", "--demos", str(bags / "demos"), "--rollouts", str(bags / "rollouts"),
                 "--heldout", str(bags / "heldout"), "--out", str(abl), "--pretrained", str(run),
                 "--align-steps", "2", "--chunks", "2", "--no-progress"]) == 0
    assert "model:no_noisy_context" in capsys.readouterr().out
    assert (abl / "aligned_clean" / "world_model.json").stat().st_mtime_ns == stamp
    # Training episodes (including those of the run it was aligned from) are excluded by default.
    assert wmpo(["eval-world-model", "--model", str(aligned), "--episodes", str(bags / "demos"), "--chunks", "2"]) == 2
    assert "used in training" in capsys.readouterr().err

    out = tmp_path / "video" / "replay.mp4"
    assert wmpo(["imagine", "--model", str(aligned), "--episode", str(bags / "heldout" / "square-0020"),
                 "--out", str(out), "--replay-actions", "--scale", "2"]) == 0
    capsys.readouterr()
    frames = imageio.mimread(out)
    assert len(frames) == 20 and frames[0].shape == (2 * SIZE, 2 * (2 * SIZE + 2), 3)
    assert out.with_suffix(".gif").is_file()


def test_imagine_with_a_policy_checkpoint(bags, tmp_path, capsys):
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy

    cfg = str(bags / "config.json")
    run = tmp_path / "wm"
    assert wmpo(["train-world-model", "--episodes", str(bags / "demos"), "--out", str(run), "--config", cfg,
                 "--steps", "1"]) == 0
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(image_size=SIZE, patch_size=8, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                                 vision_intermediate_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=2, intermediate_size=64, chunk_size=4, max_text_tokens=24))
    policy.save_pretrained(tmp_path / "policy")
    out = tmp_path / "policy.mp4"
    assert wmpo(["imagine", "--model", str(run), "--policy", str(tmp_path / "policy"), "--episode",
                 str(bags / "heldout" / "square-0021"), "--out", str(out), "--horizon", "8", "--temperature", "1.6"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frames"] == 9 and not result["replayed_actions"]
    assert wmpo(["imagine", "--model", str(run), "--episode", str(bags / "heldout" / "square-0021"),
                 "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--policy" in capsys.readouterr().err


def test_precision_flags_reach_the_trainers(bags, tmp_path, capsys):
    """``--mixed-precision`` and ``--[no-]grad-checkpointing`` override the config in `train-vae` and
    `train-world-model`: the trainers then compute in bf16 and recompute their blocks (or not), and the run
    records the values it used. An unknown value, on the command line or in the config file, stops the command
    with the field named before anything is written."""
    from test_world_model import _TrainingWatch

    from wmpo_core.world_model.transformer import SpatioTemporalBlock

    cfg = str(bags / "config.json")
    run = tmp_path / "refused"
    assert wmpo(["train-world-model", "--episodes", str(bags / "demos"), "--out", str(run), "--config", cfg,
                 "--mixed-precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "--mixed-precision" in err and "'bf16'" in err and "'fp16'" in err
    (tmp_path / "fp16.json").write_text(json.dumps({**CONFIG, "mixed_precision": "fp16"}))
    assert wmpo(["train-vae", "--episodes", str(bags / "demos"), "--out", str(run), "--config",
                 str(tmp_path / "fp16.json")]) == 2
    assert "fp16.json" in capsys.readouterr().err
    assert not run.exists()

    def watched(argv: list[str], block_types: tuple[type, ...]) -> _TrainingWatch:
        watch = _TrainingWatch(block_types)
        try:
            assert wmpo(argv) == 0
        finally:
            watch.close()
        capsys.readouterr()
        return watch

    vae = watched(["train-vae", "--episodes", str(bags / "demos"), "--out", str(tmp_path / "vae"), "--config", cfg,
                   "--steps", "1", "--mixed-precision", "bf16", "--grad-checkpointing"], ())
    assert vae.output_dtypes["Conv2d"] == {torch.bfloat16} and vae.reentrant and set(vae.reentrant) == {False}

    common = ["train-world-model", "--episodes", str(bags / "demos"), "--vae", str(tmp_path / "vae"), "--steps", "1"]
    on = watched([*common, "--out", str(tmp_path / "on"), "--config", cfg, "--mixed-precision", "bf16",
                  "--grad-checkpointing"], (SpatioTemporalBlock,))
    assert on.output_dtypes["Linear"] == {torch.bfloat16} and on.block_calls == 2  # depth 1: forward + recompute
    recorded = json.loads((tmp_path / "on" / "train_config.json").read_text())
    assert (recorded["mixed_precision"], recorded["grad_checkpointing"]) == ("bf16", True)

    (tmp_path / "on.json").write_text(json.dumps({**CONFIG, "mixed_precision": "bf16", "grad_checkpointing": True}))
    off = watched([*common, "--out", str(tmp_path / "off"), "--config", str(tmp_path / "on.json"),
                   "--mixed-precision", "no", "--no-grad-checkpointing"], (SpatioTemporalBlock,))
    assert off.output_dtypes["Linear"] == {torch.float32} and off.block_calls == 1 and not off.reentrant
    recorded = json.loads((tmp_path / "off" / "train_config.json").read_text())
    assert (recorded["mixed_precision"], recorded["grad_checkpointing"]) == ("no", False)
