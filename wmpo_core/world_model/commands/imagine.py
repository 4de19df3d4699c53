"""`wmpo imagine`: real vs imagined video for one episode."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.world_model.commands.common import error

HELP = "real vs imagined video for one episode"


def configure(parser: argparse.ArgumentParser) -> None:
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
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.policy.placement import place_policy
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


def main(args: argparse.Namespace) -> int:
    """Imagine from an episode's first frame and write real | imagined as MP4 and GIF."""
    import imageio.v2 as imageio

    from wmpo_core.data.frames import load_episode_frames
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.imagine import ReplayPolicy, imagine
    from wmpo_core.world_model.model import WorldModel

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        return error(f"--out {out}: expected a .mp4 file name")
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
            return error("give --policy PKG, or --replay-actions to replay the recorded actions")
        result = imagine(wm, policy, ep.frames[None, :1], ep.instruction, horizon, seeds=[args.seed])
    except (OSError, ValueError) as exc:
        return error(str(exc))
    # imagined index c-1 is the real first frame; real frame t pairs with imagined c-1+t.
    imagined = result.frames[0, result.context_frames - 1 :]
    video = side_by_side(ep.frames[: horizon + 1], imagined, args.scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(out, list(video), fps=args.fps, macro_block_size=1)
    gif = out.with_suffix(".gif")
    imageio.mimwrite(gif, list(video), duration=1000 / args.fps, loop=0)
    print(json.dumps({"video": str(out), "gif": str(gif), "frames": len(video), "replayed_actions": args.replay_actions}))
    return 0
