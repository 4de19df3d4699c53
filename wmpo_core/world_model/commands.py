"""`wmpo train-vae`, `train-world-model`, `eval-world-model`, `imagine`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP

HELP = "world model: train the frame VAE and the video diffusion model, evaluate, imagine"


def _error(message: str) -> int:
    print(f"wmpo: {message}", file=sys.stderr)
    return 2


def _load_config(path: str | None):
    from wmpo_core.world_model.train import WorldModelTrainConfig

    return WorldModelTrainConfig.from_json(path) if path else WorldModelTrainConfig()


# ----------------------------------------------------------------------------------- train-vae
def configure_train_vae(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-vae`."""
    parser.add_argument("--episodes", required=True, nargs="+", help="folder(s) of episode bags")
    parser.add_argument("--out", required=True, help="output directory (diffusers AutoencoderKL)")
    parser.add_argument("--config", help="JSON training config (WorldModelTrainConfig fields: vae_*, camera, image_size)")
    parser.add_argument("--steps", type=int, help="override vae_steps")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)


def main_train_vae(args: argparse.Namespace) -> int:
    """Train the tiny VAE on every frame of the episodes."""
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.episodes import load_episodes
    from wmpo_core.world_model.train import train_vae
    from wmpo_core.world_model.vae import TinyVAEConfig

    try:
        cfg = _load_config(args.config)
        if args.steps is not None and args.steps <= 0:
            raise ValueError(f"--steps: must be > 0, got {args.steps}")
        device = resolve_device(args.device)
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    stats = train_vae(episodes, args.out, steps=args.steps or cfg.vae_steps, batch_size=cfg.vae_batch_size,
                      lr=cfg.vae_lr, kl_weight=cfg.vae_kl_weight, image_size=cfg.image_size,
                      tiny=TinyVAEConfig(image_size=cfg.image_size, **cfg.tiny_vae), seed=cfg.seed, device=device)
    print(json.dumps(stats, indent=2))
    return 0


# ----------------------------------------------------------------------------------- train-world-model
def configure_train_world_model(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-world-model`."""
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of episode bags (demonstrations, or policy rollouts with --init)")
    parser.add_argument("--out", required=True, help="run directory; an existing one with checkpoints is resumed")
    parser.add_argument("--config", help="JSON training config (WorldModelTrainConfig fields)")
    parser.add_argument("--init", help="previous run to fine-tune from (policy behavior alignment)")
    parser.add_argument("--vae", help="local AutoencoderKL directory (a train-vae output or a pretrained one, kept frozen)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--no-noisy-context", action="store_true",
                        help="ablation: clean context frames (context_noise_step = 0) in training and imagination")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)


def main_train_world_model(args: argparse.Namespace) -> int:
    """Pretrain, align (--init) or resume a world model."""
    from wmpo_core.config_io import check_config
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.episodes import load_episodes
    from wmpo_core.world_model.train import train_world_model

    try:
        resolve_device(args.device)  # a missing GPU stops here, before anything is read or written
        cfg = _load_config(args.config)
        if args.steps is not None:
            cfg.steps = args.steps
            check_config(cfg, "training config (with --steps)")
        if args.no_noisy_context:
            cfg.context_noise_step = 0
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
        if args.init and not (Path(args.init) / "world_model.json").is_file():
            return _error(f"{args.init}: not a finished world-model run (no world_model.json)")
        result = train_world_model(episodes, args.out, cfg, vae_path=args.vae, init=args.init, device=args.device)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under `accelerate launch`, not one per rank
        summary = {k: v for k, v in result.items() if k != "losses"}
        summary["final_loss"] = float(np.mean(result["losses"][-20:])) if result["losses"] else None
        print(json.dumps(summary, indent=2))
    return 0


# ----------------------------------------------------------------------------------- eval-world-model
def configure_eval_world_model(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo eval-world-model`."""
    parser.add_argument("--model", required=True, action="append", help="world-model run (repeat to compare runs)")
    parser.add_argument("--episodes", required=True, nargs="+", help="folder(s) of held-out episode bags")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of K frames to predict (>= 4 recommended)")
    parser.add_argument("--max-episodes", type=int, default=16)
    parser.add_argument("--include-training", action="store_true",
                        help="also score episodes the model was trained on (excluded by default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def _pretraining_run(run: Path) -> Path:
    """The run at the root of an alignment chain (its config is the pretraining recipe)."""
    seen: set[Path] = set()
    while (run / "episodes.json").is_file() and run not in seen:
        seen.add(run)
        init = json.loads((run / "episodes.json").read_text()).get("init")
        if not init:
            break
        run = Path(init)
    return run


def main_eval_world_model(args: argparse.Namespace) -> int:
    """Fidelity table: model(s), repeat_last, shuffled_actions."""
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.episodes import load_episodes, training_episode_ids
    from wmpo_core.world_model.evaluate import evaluate_fidelity
    from wmpo_core.world_model.model import WorldModel

    try:
        device = resolve_device(args.device)
        models = {Path(m).name: WorldModel.from_pretrained(m, device=device) for m in args.model}
        first_run = Path(args.model[0])
        first = models[first_run.name]
        episodes = load_episodes(args.episodes, first.settings.camera, first.settings.image_size)
        excluded = set() if args.include_training else set().union(*(training_episode_ids(m) for m in args.model))
        held_out = [ep for ep in episodes if ep.episode_id not in excluded][: args.max_episodes]
        if not held_out:
            return _error(f"{args.episodes}: every episode was used in training; pass held-out episodes "
                          "or --include-training")
        report = evaluate_fidelity(models, held_out, chunks=args.chunks)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    if len(episodes) > len(held_out) and not args.include_training:
        report.notes.append(f"{len(episodes) - len(held_out)} episode(s) skipped (training set or --max-episodes)")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


# ----------------------------------------------------------------------------------- imagine
def configure_imagine(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo imagine`."""
    parser.add_argument("--model", required=True, help="world-model run")
    parser.add_argument("--policy", help="policy package or checkpoint directory (not needed with --replay-actions)")
    parser.add_argument("--episode", required=True, help="episode bag whose first frame starts the imagination")
    parser.add_argument("--out", required=True, help="output .mp4 (a .gif is written beside it)")
    parser.add_argument("--horizon", type=int, help="frames to imagine (default: the episode length)")
    parser.add_argument("--replay-actions", action="store_true", help="drive the world model with the recorded actions")
    parser.add_argument("--temperature", type=float, default=1.0, help="policy sampling temperature (0 = greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the video")
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def load_policy_for_imagination(path: str | Path, camera: str, temperature: float, device: str | None = "cpu"):
    """A signed policy package (verified) or a plain checkpoint directory on ``device``, wrapped for imagination."""
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.registry.package import load_package
    from wmpo_core.registry.verify import MANIFEST_FILE
    from wmpo_core.world_model.imagine import VLAImaginationPolicy

    path = Path(path)
    policy = load_package(path) if (path / MANIFEST_FILE).is_file() else VLAPolicy.from_pretrained(path).eval()
    place_policy(policy, str(device))
    return VLAImaginationPolicy(policy, camera=camera, temperature=temperature)


def side_by_side(real: np.ndarray, imagined: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, 3) pairs -> (T, H*scale, 2*W*scale + gap, 3), real left, imagined right."""
    n = min(len(real), len(imagined))
    gap = np.full((n, real.shape[1], 2, 3), 255, np.uint8)
    both = np.concatenate([real[:n], gap, imagined[:n]], axis=2)
    return both.repeat(scale, axis=1).repeat(scale, axis=2)


def main_imagine(args: argparse.Namespace) -> int:
    """Imagine from an episode's first frame and write real | imagined as MP4 and GIF."""
    import imageio.v2 as imageio

    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.episodes import load_episode_frames
    from wmpo_core.world_model.imagine import ReplayPolicy, imagine
    from wmpo_core.world_model.model import WorldModel

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        return _error(f"--out {out}: expected a .mp4 file name")
    try:
        device = resolve_device(args.device)
        wm = WorldModel.from_pretrained(args.model, device=device)
        ep = load_episode_frames(args.episode, wm.settings.camera, wm.settings.image_size)
        horizon = args.horizon or len(ep.frames) - 1
        if args.replay_actions:
            policy = ReplayPolicy(ep.actions[None, :horizon], wm.chunk_size)
        elif args.policy:
            policy = load_policy_for_imagination(args.policy, wm.settings.camera, args.temperature, device)
        else:
            return _error("give --policy PKG, or --replay-actions to replay the recorded actions")
        result = imagine(wm, policy, ep.frames[None, :1], ep.instruction, horizon, seeds=[args.seed])
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    # imagined index c-1 is the real first frame; real frame t pairs with imagined c-1+t.
    imagined = result.frames[0, result.context_frames - 1 :]
    video = side_by_side(ep.frames[: horizon + 1], imagined, args.scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(out, list(video), fps=args.fps, macro_block_size=1)
    gif = out.with_suffix(".gif")
    imageio.mimwrite(gif, list(video), duration=1000 / args.fps, loop=0)
    print(json.dumps({"video": str(out), "gif": str(gif), "frames": len(video), "replayed_actions": args.replay_actions}))
    return 0
