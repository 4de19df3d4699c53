"""`wmpo eval-reward`: precision, recall, F1 and AUC of a reward model on labelled episodes."""

from __future__ import annotations

import argparse
import json

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.reward.commands.common import auc, error

HELP = "precision / recall / F1 of the reward model"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo eval-reward`."""
    parser.add_argument("--model", required=True, help="reward-model directory")
    parser.add_argument("--episodes", required=True, nargs="+", help="folder(s) of labelled episode bags")
    parser.add_argument("--world-model", help="also score imagined replays of the episodes in this world model "
                        "against their real outcome")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def main(args: argparse.Namespace) -> int:
    """Precision, recall, F1 at the calibrated tau."""
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import evaluate_reward

    try:
        device = resolve_device(args.device)
        model = RewardModel.from_pretrained(args.model, device=device)
        episodes = load_episodes(args.episodes, model.settings.camera, model.settings.image_size)
        report = evaluate_reward(model, episodes)
        if args.world_model:
            from wmpo_core.reward.train import evaluate_reward_on_imagination
            from wmpo_core.world_model.model import WorldModel

            wm = WorldModel.from_pretrained(args.world_model, device=device)
            if wm.settings.image_size != model.settings.image_size:
                episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
            report["imagined"] = evaluate_reward_on_imagination(model, wm, episodes)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        rows = [("real episodes", report)] + ([("imagined replays", report["imagined"])] if "imagined" in report else [])
        for name, r in rows:
            print(f"{name}: episodes {r['episodes']}  tau {r['tau']:.3f}  precision {r['precision']:.3f}  "
                  f"recall {r['recall']:.3f}  f1 {r['f1']:.3f}  auc {auc(r['auc'])}  "
                  f"(tp {r['tp']} fp {r['fp']} fn {r['fn']} tn {r['tn']})")
        print(f"best tau on the real episodes {report['oracle_tau']:.3f} -> f1 {report['oracle_f1']:.3f}")
    return 0
