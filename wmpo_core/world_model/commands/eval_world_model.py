"""`wmpo eval-world-model`: fidelity of world-model runs against reference predictors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wmpo_core.policy.placement import MODELS_DEVICE_HELP
from wmpo_core.world_model.commands.common import error

HELP = "world-model fidelity against reference predictors"


def configure(parser: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
    """Fidelity table: model(s), repeat_last, shuffled_actions."""
    from wmpo_core.data.frames import load_episodes, training_episode_ids
    from wmpo_core.policy.placement import resolve_device
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
            return error(f"{args.episodes}: every episode was used in training; pass held-out episodes "
                          "or --include-training")
        report = evaluate_fidelity(models, held_out, chunks=args.chunks)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    if len(episodes) > len(held_out) and not args.include_training:
        report.notes.append(f"{len(episodes) - len(held_out)} episode(s) skipped (training set or --max-episodes)")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0
