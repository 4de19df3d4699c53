"""`wmpo train-policy`: behavior cloning from recorded episodes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HELP = "behavior cloning from recorded episodes"


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the command-line options."""
    parser.add_argument("--episodes", type=Path, help="folder of episode bags (default with a recipe that has a "
                        "'data' section: collect its demonstrations in the simulator into OUT/demos, or reuse them)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, final package)")
    parser.add_argument("--recipe", help="a recipe of wmpo_core/policy/recipes (name, e.g. 'lift_base') or a recipe "
                        "JSON file: policy config fields and TrainConfig fields, overridden by --config / --train-config "
                        "and the flags below")
    parser.add_argument("--config", type=Path, help="policy config.json (default: the embedded tiny VLA)")
    parser.add_argument("--init", type=Path, help="fine-tune this policy package (e.g. from `wmpo import-openvla`): "
                        "its config, tokenizer, norm stats and weights are kept; --config / --decoding do not apply")
    parser.add_argument("--train-config", type=Path, help="JSON of TrainConfig fields (overridden by the flags below)")
    parser.add_argument("--steps", type=int, help="optimizer steps (total, including resumed ones)")
    parser.add_argument("--batch-size", type=int, help="global batch size (split over processes)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--save-every", type=int, help="checkpoint period in steps")
    parser.add_argument("--seed", type=int, help="seed of initialization, split and data order")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process; 0 = torch's choice (default: the recipe's, else torch's choice)")
    parser.add_argument("--decoding", choices=("parallel", "autoregressive"), help="override the config's decoding mode")
    parser.add_argument("--all-episodes", action="store_true", help="also clone failed episodes")
    parser.add_argument("--parent", help="parent policy version recorded in the package manifest")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (its checkpoints and packages are deleted; "
                             "without this or --resume an existing run is refused)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from wmpo_core.policy.training_options import add_training_options

    add_training_options(parser, "N samples")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard weights, gradients and optimizer state over the processes of `accelerate launch "
                             "--multi_gpu --num_processes N` (FSDP) instead of a full copy on each (DDP)")
    parser.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank on the language model "
                        "instead of every weight (needs the lora extra; merged into the package; a resumed run "
                        "takes the same rank; 0 = full fine-tuning)")
    from wmpo_core.policy.placement import DTYPES

    parser.add_argument("--dtype", choices=DTYPES, help="weights dtype while training (auto: as stored in the "
                        "--init package, float32 for a fresh model)")


RECIPES_DIR = Path(__file__).parents[1] / "recipes"
DATA_FIELDS = ("task", "episodes", "seed", "noise", "cameras", "image_size")


def load_recipe(name_or_path: str | Path) -> dict:
    """A training recipe: ``{"policy": {...VLAConfig fields}, "train": {...TrainConfig fields}, ...}``.

    ``name_or_path`` is a file, or the name of a recipe shipped in ``wmpo_core/policy/recipes``.
    The returned dict also carries ``where`` (the file read) for error messages.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = RECIPES_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            known = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
            raise ValueError(f"recipe {name_or_path!r}: no such file and no shipped recipe of that name (have {known})")
        path = shipped
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in ("policy", "train"):
        if not isinstance(recipe.get(key, {}), dict):
            raise ValueError(f"{path}: field {key!r} must be an object")
    return {"policy": recipe.get("policy", {}), "train": recipe.get("train", {}), "where": str(path), **{
        k: v for k, v in recipe.items() if k not in ("policy", "train")}}


def recipe_episodes(recipe: dict, out: Path, progress: bool = True) -> Path:
    """The demonstrations a recipe's ``data`` section describes, collected into ``out/demos``.

    Collection is skipped when that folder already holds the number of episodes asked for
    (a rerun of the same recipe reuses its data).
    """
    from wmpo_core.data.dataset import list_episode_dirs
    from wmpo_core.data.sim_bags import collect_sim_episodes

    data = recipe.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{recipe['where']}: no 'data' section; pass --episodes")
    unknown = sorted(set(data) - set(DATA_FIELDS))
    if unknown or "task" not in data or "episodes" not in data:
        raise ValueError(f"{recipe['where']}: data needs 'task' and 'episodes' (fields {list(DATA_FIELDS)}); "
                         f"unknown {unknown}")
    folder = out / "demos"
    have = len(list_episode_dirs(folder)) if folder.is_dir() else 0
    if have == int(data["episodes"]):
        return folder
    if have:
        raise ValueError(f"{folder}: holds {have} episodes, the recipe asks for {data['episodes']}; remove it")
    collect_sim_episodes(str(data["task"]), int(data["episodes"]), folder, seed=int(data.get("seed", 0)),
                         noise=float(data.get("noise", 0.0)), cameras=tuple(data.get("cameras", ("agentview",))),
                         image_size=int(data.get("image_size", 64)), progress=progress)
    return folder


def main(args: argparse.Namespace) -> int:
    """Run behavior cloning; prints the final package path."""
    from wmpo_core.policy.configuration_vla import ConfigError, VLAConfig
    from wmpo_core.policy.train import TrainConfig, train_policy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.init is not None and (args.config is not None or args.decoding):
        print("wmpo train-policy: --init keeps the package's own config; drop --config / --decoding", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(args.recipe) if args.recipe else {"policy": {}, "train": {}, "where": "defaults"}
        config = (VLAConfig.load(args.config) if args.config
                  else VLAConfig.from_dict(recipe["policy"], where=f"{recipe['where']}: policy"))
        if args.decoding:
            config.decoding = args.decoding
        tc_fields = {**recipe["train"], **(json.loads(args.train_config.read_text()) if args.train_config else {})}
        tc = TrainConfig.from_dict(tc_fields, where=str(args.train_config or f"{recipe['where']}: train"))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"wmpo train-policy: {exc}", file=sys.stderr)
        return 2
    for flag, name in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                       ("save_every", "save_every"), ("seed", "seed"), ("threads", "torch_threads")):
        if getattr(args, flag) is not None:
            setattr(tc, name, getattr(args, flag))
    if args.all_episodes:
        tc.only_success = False
    if args.micro_batch is not None:
        tc.micro_batch = args.micro_batch
    if args.grad_checkpointing:
        tc.grad_checkpointing = True
    if args.fsdp:
        tc.fsdp = True
    if args.lora_rank is not None:
        tc.lora_rank = args.lora_rank
    if args.dtype is not None:
        tc.dtype = args.dtype
    try:  # the flags above bypass from_dict's checks
        from wmpo_core.config_io import check_config

        check_config(tc, "train config (with the command-line flags)")
        tc.__post_init__()
    except ValueError as exc:
        print(f"wmpo train-policy: {exc}", file=sys.stderr)
        return 2
    try:
        episodes = args.episodes or recipe_episodes(recipe, args.out, progress=not args.no_progress)
        package = train_policy(episodes, args.out, config, tc, resume=args.resume, parent=args.parent,
                               overwrite=args.overwrite, progress=not args.no_progress, init=args.init,
                               device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"wmpo train-policy: {exc}", file=sys.stderr)
        return 2
    if package is not None:
        print(package)
    return 0
