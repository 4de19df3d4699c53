"""`wmpo diagnose-imagination`: where imagination loses the task outcome (the reward ladder)."""

from __future__ import annotations

import argparse
import json
import sys

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.reward.commands.common import error

HELP = "where imagination loses the task outcome: reward AUC on real, VAE, per-chunk, branched, replayed video"


def configure(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--success-head", help="also score a success head (wmpo train-success-head) on rungs c, d, e")
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


def main(args: argparse.Namespace) -> int:
    """Print the ladder; write JSON with --json."""
    from pathlib import Path

    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.ladder import RUNGS, region_mask, run_ladder
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.world_model.model import WorldModel

    if args.branch_chunks < 1:
        return error("diagnose-imagination: --branch-chunks must be >= 1")
    if args.resamples < 100:
        return error("diagnose-imagination: --resamples must be >= 100")
    if args.max_episodes is not None and args.max_episodes < 2:
        return error("diagnose-imagination: --max-episodes must be >= 2")
    if args.json and Path(args.json).exists():
        return error(f"diagnose-imagination: {args.json} exists; choose a new file (nothing is overwritten)")
    try:
        region = _parse_region(args.region) if args.region else None
        device = resolve_device(args.device)
        wm = WorldModel.from_pretrained(args.world_model, device=device)
        reward = RewardModel.from_pretrained(args.reward, device=device)
        if reward.settings.camera != wm.settings.camera:
            raise ValueError(f"the reward model reads camera {reward.settings.camera!r}, the world model imagines "
                             f"{wm.settings.camera!r}")
        head, head_tau, head_rule = None, 0.5, "final"
        if args.success_head:
            from wmpo_core.world_model.success_head import load_success_head

            head, info = load_success_head(args.success_head, args.world_model, device=device)
            head_tau, head_rule = info.tau, info.rule
        episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
        if args.max_episodes is not None and len(episodes) > args.max_episodes:
            keep = sorted({round(i * (len(episodes) - 1) / (args.max_episodes - 1)) for i in range(args.max_episodes)})
            episodes = [episodes[i] for i in keep]
        if region is None:
            region = _task_region(args.task, args.episodes, wm.settings.camera)
        region_mask(wm.settings.image_size, region)  # validates the box
        report = run_ladder(wm, reward, episodes, branch_chunks=args.branch_chunks, region=region, seed=args.seed,
                            resamples=args.resamples, rungs=args.rungs or RUNGS,
                            progress=lambda message: print(f"[diagnose] {message}", file=sys.stderr, flush=True),
                            success_head=head, head_tau=head_tau, head_rule=head_rule)
    except (OSError, ValueError) as exc:
        return error(f"diagnose-imagination: {exc}")
    print(report.table())
    if args.json:
        data = report.to_dict() | {"world_model": str(args.world_model), "reward": str(args.reward),
                                   "success_head_dir": args.success_head,
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
