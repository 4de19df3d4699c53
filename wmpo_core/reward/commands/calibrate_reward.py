"""`wmpo calibrate-reward`: set the reward threshold on imagined replays."""

from __future__ import annotations

import argparse
import json

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.reward.commands.common import auc, error
from wmpo_core.stats import THRESHOLD_RULES

HELP = "set the reward threshold on imagined replays"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo calibrate-reward`."""
    parser.add_argument("--model", required=True, help="reward-model directory")
    parser.add_argument("--world-model", required=True, help="world model whose imagined video GRPO will score")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="labelled episode folder(s) to replay in imagination (not the evaluation episodes)")
    parser.add_argument("--out", required=True, help="new reward-model directory (the input is left unchanged)")
    parser.add_argument("--max-episodes", type=int, help="use at most this many episodes (evenly spaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the imagined replays (default 0)")
    parser.add_argument("--rule", choices=THRESHOLD_RULES, default="f1",
                        help="what the threshold maximizes: F1 of the successes (default) or balanced accuracy "
                             "(the mean of both outcomes' recall; not fooled by a set where most episodes succeed)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def main(args: argparse.Namespace) -> int:
    """Copy a reward model with tau calibrated on imagined replays of labelled episodes."""
    from pathlib import Path

    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import calibrate_on_imagination
    from wmpo_core.world_model.model import WorldModel

    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        return error("calibrate-reward: --out must differ from --model (the input is kept as it is)")
    try:
        device = resolve_device(args.device)
        model = RewardModel.from_pretrained(args.model, device=device)
        wm = WorldModel.from_pretrained(args.world_model, device=device)
        episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
        if args.max_episodes is not None and len(episodes) > args.max_episodes > 0:
            keep = sorted({round(i * (len(episodes) - 1) / (args.max_episodes - 1 or 1))
                           for i in range(args.max_episodes)})
            episodes = [episodes[i] for i in keep]
        result = calibrate_on_imagination(model, wm, episodes, seed=args.seed, rule=args.rule)
    except (OSError, ValueError) as exc:
        return error(f"calibrate-reward: {exc}")
    model.save_pretrained(out)
    record = {k: v for k, v in result.items() if k != "scores"} | {
        "source": str(args.model), "world_model": str(args.world_model), "episode_folders": list(args.episodes)}
    (out / "calibration.json").write_text(json.dumps(record | {"scores": result["scores"]}, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"tau {result['tau_before']:.3f} -> {result['tau']:.3f} on {result['episodes']} imagined replays "
              f"({result['successes']} successes, by {args.rule}): F1 {result['f1_before']:.3f} -> {result['f1']:.3f}, "
              f"balanced accuracy {result['balanced_accuracy_before']:.3f} -> {result['balanced_accuracy']:.3f}, "
              f"AUC {auc(result['auc'])}; wrote {out}")
    return 0
