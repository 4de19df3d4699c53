"""`wmpo train-reward`, `wmpo eval-reward`, `wmpo calibrate-reward`."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "reward model: train and evaluate the video success classifier"


def _error(message: str) -> int:
    print(f"wmpo: {message}", file=sys.stderr)
    return 2


def _auc(value: float | None) -> str:
    return "n/a (one outcome)" if value is None else f"{value:.3f}"


def configure_train_reward(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-reward`."""
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of labelled episode bags (successes and failures)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", help="JSON config (RewardTrainConfig fields)")
    parser.add_argument("--backbone", help="local pretrained VideoMAE directory (default: tiny, random init)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--min-frame", type=int, help="success is not declared by clips ending before this frame")
    parser.add_argument("--world-model", help="also train on imagined replays of the episodes in this world model "
                        "(tau then calibrated on real and imagined validation episodes)")


def main_train_reward(args: argparse.Namespace) -> int:
    """Train, calibrate tau, save."""
    from wmpo_core.config_io import check_config
    from wmpo_core.reward.train import RewardTrainConfig, train_reward
    from wmpo_core.world_model.episodes import load_episodes

    try:
        cfg = RewardTrainConfig.from_json(args.config) if args.config else RewardTrainConfig()
        if args.steps is not None:
            cfg.steps = args.steps
        if args.min_frame is not None:
            cfg.min_frame = args.min_frame
        check_config(cfg, "reward config (with --steps / --min-frame)")
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
        world_model = None
        if args.world_model:
            from wmpo_core.world_model.model import WorldModel

            world_model = WorldModel.from_pretrained(args.world_model)
            if world_model.settings.image_size != cfg.image_size:
                raise ValueError(f"{args.world_model}: {world_model.settings.image_size} px frames, the reward "
                                 f"config expects {cfg.image_size}")
        result = train_reward(episodes, args.out, cfg, backbone=args.backbone, world_model=world_model)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under `accelerate launch`, not one per rank
        print(json.dumps(result, indent=2))
    return 0


def configure_eval_reward(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo eval-reward`."""
    parser.add_argument("--model", required=True, help="reward-model directory")
    parser.add_argument("--episodes", required=True, nargs="+", help="folder(s) of labelled episode bags")
    parser.add_argument("--world-model", help="also score imagined replays of the episodes in this world model "
                        "against their real outcome")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main_eval_reward(args: argparse.Namespace) -> int:
    """Precision, recall, F1 at the calibrated tau."""
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import evaluate_reward
    from wmpo_core.world_model.episodes import load_episodes

    try:
        model = RewardModel.from_pretrained(args.model)
        episodes = load_episodes(args.episodes, model.settings.camera, model.settings.image_size)
        report = evaluate_reward(model, episodes)
        if args.world_model:
            from wmpo_core.reward.train import evaluate_reward_on_imagination
            from wmpo_core.world_model.model import WorldModel

            wm = WorldModel.from_pretrained(args.world_model)
            if wm.settings.image_size != model.settings.image_size:
                episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
            report["imagined"] = evaluate_reward_on_imagination(model, wm, episodes)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        rows = [("real episodes", report)] + ([("imagined replays", report["imagined"])] if "imagined" in report else [])
        for name, r in rows:
            print(f"{name}: episodes {r['episodes']}  tau {r['tau']:.3f}  precision {r['precision']:.3f}  "
                  f"recall {r['recall']:.3f}  f1 {r['f1']:.3f}  auc {_auc(r['auc'])}  "
                  f"(tp {r['tp']} fp {r['fp']} fn {r['fn']} tn {r['tn']})")
        print(f"best tau on the real episodes {report['oracle_tau']:.3f} -> f1 {report['oracle_f1']:.3f}")
    return 0


def configure_calibrate_reward(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo calibrate-reward`."""
    parser.add_argument("--model", required=True, help="reward-model directory")
    parser.add_argument("--world-model", required=True, help="world model whose imagined video GRPO will score")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="labelled episode folder(s) to replay in imagination (not the evaluation episodes)")
    parser.add_argument("--out", required=True, help="new reward-model directory (the input is left unchanged)")
    parser.add_argument("--max-episodes", type=int, help="use at most this many episodes (evenly spaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the imagined replays (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main_calibrate_reward(args: argparse.Namespace) -> int:
    """Copy a reward model with tau calibrated on imagined replays of labelled episodes."""
    from pathlib import Path

    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import calibrate_on_imagination
    from wmpo_core.world_model.episodes import load_episodes
    from wmpo_core.world_model.model import WorldModel

    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        return _error("calibrate-reward: --out must differ from --model (the input is kept as it is)")
    try:
        model = RewardModel.from_pretrained(args.model)
        wm = WorldModel.from_pretrained(args.world_model)
        episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
        if args.max_episodes is not None and len(episodes) > args.max_episodes > 0:
            keep = sorted({round(i * (len(episodes) - 1) / (args.max_episodes - 1 or 1))
                           for i in range(args.max_episodes)})
            episodes = [episodes[i] for i in keep]
        result = calibrate_on_imagination(model, wm, episodes, seed=args.seed)
    except (OSError, ValueError) as exc:
        return _error(f"calibrate-reward: {exc}")
    model.save_pretrained(out)
    record = {k: v for k, v in result.items() if k != "scores"} | {
        "source": str(args.model), "world_model": str(args.world_model), "episode_folders": list(args.episodes)}
    (out / "calibration.json").write_text(json.dumps(record | {"scores": result["scores"]}, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"tau {result['tau_before']:.3f} -> {result['tau']:.3f} on {result['episodes']} imagined replays "
              f"({result['successes']} successes): F1 {result['f1_before']:.3f} -> {result['f1']:.3f}, "
              f"AUC {_auc(result['auc'])}; wrote {out}")
    return 0

