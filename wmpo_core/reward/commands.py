"""`wmpo train-reward`, `wmpo eval-reward`, `wmpo calibrate-reward`."""

from __future__ import annotations

import argparse
import json
import sys

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP

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
    parser.add_argument("--imagined-by", nargs=2, action="append", default=[], metavar=("WORLD_MODEL", "EPISODES"),
                        help="also train on this world model's imagined replays of the episodes in EPISODES, which it "
                        "must not have trained on (cross-fitting: give two world models, each trained on one fold, "
                        "the other fold's episodes); repeatable")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)


def main_train_reward(args: argparse.Namespace) -> int:
    """Train, calibrate tau, save."""
    from wmpo_core.config_io import check_config
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.train import RewardTrainConfig, train_reward
    from wmpo_core.world_model.episodes import load_episodes

    try:
        device = resolve_device(args.device)  # a missing GPU stops here, before anything is read or written
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

            world_model = WorldModel.from_pretrained(args.world_model, device=device)
            if world_model.settings.image_size != cfg.image_size:
                raise ValueError(f"{args.world_model}: {world_model.settings.image_size} px frames, the reward "
                                 f"config expects {cfg.image_size}")
        imagined = []
        if args.imagined_by:
            from wmpo_core.reward.train import out_of_fold_replays

            pairs = [(run, load_episodes(folder, cfg.camera, cfg.image_size)) for run, folder in args.imagined_by]
            imagined = out_of_fold_replays(pairs, cfg.seed, device=str(device), progress=True, camera=cfg.camera)
        result = train_reward(episodes, args.out, cfg, backbone=args.backbone, world_model=world_model,
                              imagined=imagined, device=args.device)
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
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def main_eval_reward(args: argparse.Namespace) -> int:
    """Precision, recall, F1 at the calibrated tau."""
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import evaluate_reward
    from wmpo_core.world_model.episodes import load_episodes

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
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def main_calibrate_reward(args: argparse.Namespace) -> int:
    """Copy a reward model with tau calibrated on imagined replays of labelled episodes."""
    from pathlib import Path

    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.reward.train import calibrate_on_imagination
    from wmpo_core.world_model.episodes import load_episodes
    from wmpo_core.world_model.model import WorldModel

    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        return _error("calibrate-reward: --out must differ from --model (the input is kept as it is)")
    try:
        device = resolve_device(args.device)
        model = RewardModel.from_pretrained(args.model, device=device)
        wm = WorldModel.from_pretrained(args.world_model, device=device)
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



HELP_diagnose_imagination = "where imagination loses the task outcome: reward AUC on real, VAE, per-chunk, branched, replayed video"


def configure_diagnose_imagination(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo diagnose-imagination`."""
    parser.add_argument("--world-model", required=True, help="world-model directory")
    parser.add_argument("--reward", required=True, help="reward-model directory")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="labelled episode folder(s) that neither model trained on")
    parser.add_argument("--branch-chunks", type=int, default=2,
                        help="rung (d) starts imagining this many chunks before the outcome (default 2)")
    parser.add_argument("--region", help="task region x0,y0,x1,y1 in [0, 1] for fidelity (default: the task's own "
                        "for the world model's camera, else the whole frame)")
    parser.add_argument("--task", help="task whose region to use (default: the first episode's task)")
    parser.add_argument("--max-episodes", type=int, help="use at most this many episodes (evenly spaced)")
    parser.add_argument("--rungs", nargs="+", help="only these rungs (a_real b_vae c_chunk d_branch e_replay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the imagined frames and the bootstrap")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--json", help="also write the full report (with every episode's scores) to this file")
    parser.add_argument("--device", default="cpu", help=MODELS_DEVICE_HELP)


def _parse_region(text: str) -> tuple[float, float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 4:
        raise ValueError(f"--region: expected four numbers x0,y0,x1,y1, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--region: expected numbers, got {text!r}") from None
    return values  # type: ignore[return-value]


def main_diagnose_imagination(args: argparse.Namespace) -> int:
    """Print the ladder; write JSON with --json."""
    from pathlib import Path

    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.ladder import RUNGS, region_mask, run_ladder
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.world_model.episodes import load_episodes
    from wmpo_core.world_model.model import WorldModel

    if args.branch_chunks < 1:
        return _error("diagnose-imagination: --branch-chunks must be >= 1")
    if args.resamples < 100:
        return _error("diagnose-imagination: --resamples must be >= 100")
    if args.max_episodes is not None and args.max_episodes < 2:
        return _error("diagnose-imagination: --max-episodes must be >= 2")
    if args.json and Path(args.json).exists():
        return _error(f"diagnose-imagination: {args.json} exists; choose a new file (nothing is overwritten)")
    try:
        region = _parse_region(args.region) if args.region else None
        device = resolve_device(args.device)
        wm = WorldModel.from_pretrained(args.world_model, device=device)
        reward = RewardModel.from_pretrained(args.reward, device=device)
        if reward.settings.camera != wm.settings.camera:
            raise ValueError(f"the reward model reads camera {reward.settings.camera!r}, the world model imagines "
                             f"{wm.settings.camera!r}")
        episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
        if args.max_episodes is not None and len(episodes) > args.max_episodes:
            keep = sorted({round(i * (len(episodes) - 1) / (args.max_episodes - 1)) for i in range(args.max_episodes)})
            episodes = [episodes[i] for i in keep]
        if region is None:
            region = _task_region(args.task, args.episodes, wm.settings.camera)
        region_mask(wm.settings.image_size, region)  # validates the box
        report = run_ladder(wm, reward, episodes, branch_chunks=args.branch_chunks, region=region, seed=args.seed,
                            resamples=args.resamples, rungs=args.rungs or RUNGS,
                            progress=lambda message: print(f"[diagnose] {message}", file=sys.stderr, flush=True))
    except (OSError, ValueError) as exc:
        return _error(f"diagnose-imagination: {exc}")
    print(report.table())
    if args.json:
        data = report.to_dict() | {"world_model": str(args.world_model), "reward": str(args.reward),
                                   "episode_folders": list(args.episodes)}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _task_region(task: str | None, folders: list[str], camera: str) -> tuple[float, float, float, float] | None:
    """The task's region box for ``camera`` (the task named, else the first episode's), or None."""
    from wmpo_core.data.bag import episode_dirs, read_metadata
    from wmpo_core.sim.tasks import TASKS

    if task is None:
        for folder in folders:
            dirs = episode_dirs(folder)
            if dirs:
                task = read_metadata(dirs[0]).task
                break
    if task is not None and task not in TASKS:
        if task:
            print(f"[diagnose] task {task!r} has no region table; fidelity over the whole frame only", file=sys.stderr)
        return None
    return TASKS[task].regions.get(camera) if task else None
