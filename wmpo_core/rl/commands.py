"""`wmpo grpo`, `wmpo grpo-sim`, `wmpo dpo`, `wmpo compare`: improve a policy package and compare the results.

Every trainer writes ``<out>/policy``, a package whose parent is the base policy; pass
``--sign KEY`` to sign it (or sign it later with `wmpo export`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

HELP = "policy improvement: GRPO in imagination, online GRPO and DPO baselines, results table"


ROWS = "N rows (one observation and its action chunk)"


def _error(command: str, message: str) -> int:
    print(f"wmpo {command}: {message}", file=sys.stderr)
    return 2


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _add_common(parser: argparse.ArgumentParser, micro_unit: str) -> None:
    from wmpo_core.policy.training_options import add_training_options

    parser.add_argument("--policy", required=True, help="base policy package directory")
    parser.add_argument("--out", required=True, type=Path, help="run directory (the package goes to <out>/policy)")
    parser.add_argument("--config", help="JSON trainer config (fields of the command's config dataclass)")
    parser.add_argument("--sign", type=Path, help="Ed25519 private key: sign the resulting package")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="train LoRA adapters of this rank on the language model instead of every weight "
                             "(needs the lora extra; merged into the package; 0 = full fine-tuning)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype while training (auto: as stored in the package)")
    add_training_options(parser, micro_unit)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _prepare_policy(policy: Any, args: argparse.Namespace, device: Any) -> Any:
    """--device, --dtype, --lora-rank and --grad-checkpointing on a loaded base policy (rollouts and updates
    then share the same numerics)."""
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.policy.training_options import enable_gradient_checkpointing

    if getattr(policy.config, "action_head", "tokens") != "tokens":
        raise ValueError(f"{args.policy}: config.action_head is {policy.config.action_head!r}; GRPO and DPO need "
                         "the discrete action tokens' log-probs (an OpenVLA-OFT checkpoint without its L1 head)")
    place_policy(policy, str(device), args.dtype)
    if args.lora_rank:
        from wmpo_core.policy.lora import LoRASettings, apply_lora

        try:
            apply_lora(policy, LoRASettings(rank=args.lora_rank))
        except ImportError as exc:
            raise ValueError(f"--lora-rank: {exc}") from None
    if args.grad_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy


def _finish(command: str, result: dict[str, Any], sign: Path | None) -> int:
    package = result.get("package")
    if package and sign is not None:
        from wmpo_core.registry.signing import sign_package

        sign_package(package, sign)
        print(f"signed {package}", file=sys.stderr)
    if package:
        print(f"wmpo {command}: wrote {package} (version {result.get('version')}, parent {result.get('base_version')})")
    return 0


# ================================================================================ grpo (imagination)
def start_state_seeds(folders: list[str]) -> dict[str, Any]:
    """``task`` and ``seed_ranges`` ([name, start, stop] runs of consecutive seeds) of the simulated episodes
    in ``folders``, for the manifest: `wmpo compare` checks them against its evaluation seeds. Episodes
    without a seed (a real robot's) or whose metadata cannot be read add nothing."""
    from wmpo_core.data.bag import EpisodeError, episode_dirs, read_metadata

    tasks: set[str] = set()
    seeds: set[int] = set()
    for folder in folders:
        for path in episode_dirs(folder):
            try:
                metadata = read_metadata(path)
            except (EpisodeError, OSError, ValueError):
                continue  # load_start_states names and skips what it cannot read
            tasks.add(metadata.task)
            if metadata.seed is not None:
                seeds.add(metadata.seed)
    runs: list[list[Any]] = []
    for seed in sorted(seeds):
        if runs and runs[-1][2] == seed:
            runs[-1][2] = seed + 1
        else:
            runs.append(["start states", seed, seed + 1])
    out: dict[str, Any] = {"seed_ranges": runs} if runs else {}
    if len(tasks) == 1:
        out["task"] = tasks.pop()
    return out


def configure_grpo(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo grpo`."""
    _add_common(parser, ROWS)
    parser.add_argument("--world-model", required=True, help="world-model run directory (world_model.json)")
    parser.add_argument("--reward", required=True, help="reward-model directory (reward.json)")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of recorded episodes: their first frames start imagination")
    parser.add_argument("--iterations", type=int, help="override config.iterations")
    parser.add_argument("--budget", type=int, help="real trajectories behind the world and reward models (recorded in the manifest)")


def main_grpo(args: argparse.Namespace) -> int:
    """GRPO in imagination; an --out with checkpoints resumes.

    Data parallel: ``accelerate launch --multi_gpu --num_processes N -m wmpo_core.cli grpo ...``
    (on CPU-only machines too: each rank imagines its share of the start states, DDP over gloo).
    """
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, make_accelerator, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.rl.config import WMPOConfig, load_config
    from wmpo_core.rl.rollouts import VideoReward, load_start_states
    from wmpo_core.rl.trainer_imagination import train_wmpo
    from wmpo_core.world_model.model import WorldModel

    _setup_logging()
    try:
        config = load_config(WMPOConfig, args.config)
        if args.iterations:
            config.iterations = args.iterations
        if check_micro_batch(args.micro_batch) is not None:
            config.grpo.micro_batch = args.micro_batch
        config.validate()
        accelerator = make_accelerator(args.device)
        device = training_device(args.device, accelerator)
        policy = _prepare_policy(load_package(args.policy), args, device)
        world_model = WorldModel.from_pretrained(args.world_model, device=device)
        reward = VideoReward(RewardModel.from_pretrained(args.reward, device=device))
        starts = load_start_states(args.episodes, world_model.settings.camera, world_model.settings.image_size,
                                   start=config.start, branch_before=config.branch_before,
                                   context_frames=world_model.context_frames)
    except (OSError, ValueError, PackageError) as exc:
        return _error("grpo", str(exc))
    extra: dict[str, Any] = {"world_model": str(args.world_model), "reward": str(args.reward),
                             **start_state_seeds(args.episodes)}
    if args.budget is not None:
        extra["budget"] = args.budget
    try:
        result = train_wmpo(policy, world_model, reward, starts, args.out, config, accelerator=accelerator,
                            progress=not args.quiet, data_summary=extra)
    except (FileExistsError, ValueError) as exc:
        return _error("grpo", str(exc))
    return _finish("grpo", result, args.sign) if accelerator.is_main_process else 0


# ================================================================================ grpo-sim
def configure_grpo_sim(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo grpo-sim`."""
    _add_common(parser, ROWS)
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--budget", type=int, required=True, help="P: real trajectories in total")
    parser.add_argument("--max-steps", type=int, help="episode horizon (default: the task's)")


def main_grpo_sim(args: argparse.Namespace) -> int:
    """Online GRPO in the simulator until the budget is spent."""
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.config import SimGRPOConfig, load_config
    from wmpo_core.rl.trainer_sim import train_grpo_sim

    _setup_logging()
    try:
        config = load_config(SimGRPOConfig, args.config)
        config.budget = args.budget
        if args.max_steps is not None:
            config.max_steps = args.max_steps
        if check_micro_batch(args.micro_batch) is not None:
            config.grpo.micro_batch = args.micro_batch
        config.validate()
        policy = _prepare_policy(load_package(args.policy), args, training_device(args.device))
        result = train_grpo_sim(policy, args.task, args.out, config, progress=not args.quiet)
    except (OSError, ValueError, PackageError) as exc:
        return _error("grpo-sim", str(exc))
    return _finish("grpo-sim", result, args.sign)


# ================================================================================ dpo
def configure_dpo(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo dpo`."""
    _add_common(parser, "N preference pairs")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--episodes", help="folder of recorded, labeled rollouts of the base policy")
    source.add_argument("--task", help="collect the rollouts in the simulator for this task instead")
    parser.add_argument("--budget", type=int, required=True, help="P: rollouts used (the first P episodes, or P collected)")
    parser.add_argument("--max-steps", type=int, help="episode horizon in the simulator (default: the task's)")


def main_dpo(args: argparse.Namespace) -> int:
    """Offline DPO against the frozen base policy."""
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS, DPOTrainConfig, load_config
    from wmpo_core.rl.trainer_dpo import collect_base_rollouts, train_dpo

    _setup_logging()
    try:
        config = load_config(DPOTrainConfig, args.config)
        config.budget = args.budget
        if args.max_steps is not None:
            config.max_steps = args.max_steps
        if check_micro_batch(args.micro_batch) is not None:
            config.dpo.micro_batch = args.micro_batch
        check_micro_batch(config.dpo.micro_batch, "config.dpo.micro_batch")
        policy = _prepare_policy(load_package(args.policy), args, training_device(args.device))
        ids: list[str] = []
        if args.episodes:
            from wmpo_core.data.bag import episode_dirs
            from wmpo_core.rl.rollouts import trajectories_from_episodes

            if args.budget < 2:
                raise ValueError(f"--budget: expected >= 2 episodes, got {args.budget}")
            if not Path(args.episodes).is_dir():
                raise FileNotFoundError(f"{args.episodes}: episodes directory does not exist")
            trajectories, ids = trajectories_from_episodes(episode_dirs(args.episodes), policy, limit=args.budget)
            if len(ids) < args.budget:
                logging.getLogger(__name__).warning("%s: only %d usable episodes for a budget of %d",
                                                    args.episodes, len(ids), args.budget)
            extra: dict[str, Any] = {"episodes_dir": str(args.episodes)}
        else:
            config.validate()
            rollouts = collect_base_rollouts(policy, args.task, config, progress=not args.quiet)
            trajectories = rollouts.batch
            extra = {"task": args.task,
                     "seed_range": [POLICY_ROLLOUT_SEEDS.name, min(rollouts.seeds), max(rollouts.seeds) + 1]}
        result = train_dpo(policy, trajectories, args.out, config, data_summary=extra, episode_ids=ids,
                           progress=not args.quiet)
    except (OSError, ValueError, PackageError) as exc:
        return _error("dpo", str(exc))
    return _finish("dpo", result, args.sign)


# ================================================================================ compare
def configure_compare(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo compare`."""
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--budget", type=int, required=True, help="P: real trajectories each trained method may use")
    parser.add_argument("--episodes", type=int, default=100, help="held-out evaluation episodes per method (default 100)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first evaluation start state = 900000 + this (default 0; e.g. 10000 for states "
                             "no earlier comparison has seen)")
    parser.add_argument("--json", action="store_true", help="print one JSON row per method")
    parser.add_argument("--base", required=True, help="base policy package")
    parser.add_argument("--dpo", help="DPO package (default: train one from --base with the budget)")
    parser.add_argument("--grpo-sim", help="online-GRPO package (default: train one from --base with the budget)")
    parser.add_argument("--wmpo", help="WMPO package (default: train one when --world-model is given)")
    parser.add_argument("--world-model", help="world-model run pretrained on demonstrations: aligned here on the "
                        "budget's rollouts (unless --no-align), then WMPO imagines in it")
    parser.add_argument("--no-align", action="store_true", help="use --world-model as it is (no behavior alignment)")
    parser.add_argument("--align-steps", type=int, help="alignment steps (default: the world model's own config)")
    parser.add_argument("--reward", help="reward-model directory (default: trained here on the rollouts and --demos)")
    parser.add_argument("--demos", nargs="+",
                        help="recorded episode folder(s): more reward-model data and imagination start states")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the base-policy rollouts and of every evaluation "
                             "(0 = greedy; default 1.0)")
    parser.add_argument("--steps-after-success", type=int, default=8,
                        help="rollouts keep recording this many steps past a success, for the reward model (default 8)")
    parser.add_argument("--validation-episodes", type=int, default=50,
                        help="validation start states that choose among a run's snapshot packages (default 50)")
    parser.add_argument("--work", type=Path, help="where trained methods go (default: compare-<task>-P<budget>)")
    parser.add_argument("--max-steps", type=int, help="episode horizon for training and evaluation (default: the task's)")
    from wmpo_core.pipeline.recipe import add_recipe_option

    add_recipe_option(parser)
    parser.add_argument("--wmpo-config", help="JSON WMPOConfig for a WMPO trained here (default: the recipe's)")
    parser.add_argument("--dpo-config", help="JSON DPOTrainConfig for a DPO trained here (budget from the flags)")
    parser.add_argument("--grpo-sim-config", help="JSON SimGRPOConfig for an online GRPO trained here")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig for a reward model trained here "
                        "(default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="evaluate the methods in this many processes at once (default 1; one core each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr, --json or not)")


def main_compare(args: argparse.Namespace) -> int:
    """Train what is missing, evaluate every method on the same held-out seeds, print the table."""
    from wmpo_core.io_utils import StageError
    from wmpo_core.pipeline.compare import train_missing
    from wmpo_core.pipeline.recipe import recipe_from_args
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.compare import SimulatorPool, compare, format_table, results_json
    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, load_config

    _setup_logging()
    if args.episodes < 1:
        return _error("compare", f"--episodes: expected a positive number, got {args.episodes}")
    work = args.work or Path(f"compare-{args.task}-P{args.budget}")
    pool = SimulatorPool(args.task)
    try:
        configs: dict[str, Any] = {}
        for method, cls, path in (("dpo", DPOTrainConfig, args.dpo_config), ("grpo-sim", SimGRPOConfig,
                                                                               args.grpo_sim_config)):
            if path:
                configs[method] = load_config(cls, path)
        # WMPO's world-model, reward and GRPO settings: the task's recipe, as in `wmpo loop` and `wmpo demo`.
        recipe = recipe_from_args(args)
        if args.temperature < 0:
            raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
        packages = train_missing(
            args.task, args.budget, args.base, work,
            {"dpo": args.dpo, "grpo-sim": args.grpo_sim, "wmpo": args.wmpo}, recipe,
            max_steps=args.max_steps, world_model=args.world_model, reward=args.reward, episodes=args.demos,
            configs=configs, pool=pool, temperature=args.temperature, align=not args.no_align,
            align_steps=args.align_steps, steps_after_success=args.steps_after_success,
            validation_episodes=args.validation_episodes, progress=not args.quiet,
        )
        results = compare(args.task, packages, args.budget, args.episodes, max_steps=args.max_steps, pool=pool,
                          seed_offset=args.seed_offset, temperature=args.temperature, cache=work / "evaluations",
                          jobs=args.jobs)
    except (OSError, ValueError, PackageError, StageError) as exc:
        return _error("compare", str(exc))
    finally:
        pool.close()
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.jsonl").write_text(results_json(results) + "\n")
    print(results_json(results) if args.json else format_table(args.task, args.budget, results))
    return 0
