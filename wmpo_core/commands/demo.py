"""`wmpo demo`: the whole loop on the simulated robot, one stage after another (wmpo_core.demo)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wmpo_core.demo import (
    DEMO_RECIPES,
    DEMO_VAE_STEPS,
    STAGES,
    mark_demo_folder,
    plan,
    print_table,
    remove_demo_outputs,
)
from wmpo_core.io_utils import StageError, read_json
from wmpo_core.pipeline.recipe import add_recipe_option
from wmpo_core.pipeline.runner import MARKER, run_stage

HELP = "run the whole loop on the simulated robot and write a report"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo demo`; the defaults fit in about 45 minutes on a 2-core CPU."""
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--task", default="lift", help="simulated task (default: lift)")
    parser.add_argument("--demos", type=int, default=40, help="scripted demonstrations (default 40)")
    parser.add_argument("--rollouts", type=int, default=16, help="base-policy rollouts (default 16)")
    parser.add_argument("--eval-episodes", type=int, default=4,
                        help="held-out evaluation episodes per policy through the ROS 2 graph (default 4)")
    # 250: the gain the demo's GRPO gave on lift (about 7 points, 68 vs 41 discordant pairs on 400 fresh states)
    # reaches p < 0.05 on 100 states in about 30% of evaluations, on 250 (the most the 45-minute budget holds)
    # in about 60%, on 400 in about 80% (binomial simulation from that split)
    parser.add_argument("--held-out", type=int, default=250,
                        help="held-out start states on which the base and the pushed policy are evaluated straight in "
                        "the simulator, in parallel processes, for the paired test (default 250; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="offset of every seed range (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, help="scripted demonstrator noise (default 0)")
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: the task's)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the learned policies on the robot (0 = greedy; default 1.0)")
    parser.add_argument("--steps-after-success", type=int, default=16,
                        help="steps recorded past a success in training episodes, for the reward model (default 16)")
    parser.add_argument("--bc-steps", type=int, help="behavior-cloning steps (default: the task's base recipe, 600 for lift)")
    parser.add_argument("--vae-steps", type=int, help=f"frame autoencoder steps (default: the --wm-config value, "
                        f"else {DEMO_VAE_STEPS})")
    parser.add_argument("--wm-steps", type=int, default=1200, help="world-model pretraining steps (default 1200)")
    parser.add_argument("--align-steps", type=int, default=300, help="world-model alignment steps (default 300)")
    parser.add_argument("--reward-steps", type=int, default=600, help="reward-model steps (default 600)")
    parser.add_argument("--grpo-iterations", type=int, default=6, help="GRPO iterations (default 6)")
    parser.add_argument("--bc-config", help="JSON TrainConfig for behavior cloning")
    demo_recipes = ", ".join(f"recipes/{name} for {task}" for task, name in DEMO_RECIPES.items())
    add_recipe_option(parser, f"the demo's recipe for the task, wmpo_core/pipeline/{demo_recipes}; else the "
                      "task's shared recipes/<task>.json, as loop and compare")
    parser.add_argument("--wm-config", help="JSON WorldModelTrainConfig (default: the recipe's, the 64 px simulator "
                        "config)")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig (default: the recipe's; for lift the shipped "
                        "lift config)")
    parser.add_argument("--grpo-config", help="JSON WMPOConfig (default: the recipe's, e.g. lift_wmpo.json)")
    parser.add_argument("--direct", action="store_true",
                        help="run learned-policy episodes straight in the simulator (no ROS graph; faster)")
    parser.add_argument("--ros-demos", action="store_true",
                        help="record the scripted demonstrations through the ROS 2 graph too (default: straight in "
                        "the simulator, 2-3x faster; learned-policy episodes always go through the graph unless "
                        "--direct)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: remove what earlier demo runs wrote in --out (nothing else)")


def _check(args: argparse.Namespace) -> str | None:
    for name in ("demos", "rollouts", "eval_episodes"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    if args.held_out < 0:
        return "--held-out must be >= 0"
    for name in ("bc_config", "wm_config", "reward_config", "grpo_config", "recipe"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            return f"--{name.replace('_', '-')} {value}: no such file"
        if value:
            setattr(args, name, str(Path(value).resolve()))
    return None

def main(args: argparse.Namespace) -> int:
    """Run the stages not finished yet, then print the before/after table."""
    if (problem := _check(args)) is not None:
        print(f"wmpo demo: {problem}", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    if args.fresh and (problem := remove_demo_outputs(out)) is not None:
        print(f"wmpo demo: --fresh: {problem}", file=sys.stderr)
        return 2
    try:
        steps = plan(args, out)
    except ValueError as exc:
        print(f"wmpo demo: {exc}", file=sys.stderr)
        return 2
    mark_demo_folder(out)
    estimates = {s.name: s.estimate(args) for s in STAGES}
    todo = sum(estimates[s.name] for s in steps if not s.done)
    print(f"wmpo demo: {len(steps)} stages, about {todo / 60:.0f} min left on a 2-core CPU; output in {out}/")
    for i, s in enumerate(steps, 1):
        took = f"done in {read_json(s.marker).get('seconds', 0):.0f} s, reused" if s.done else f"~{estimates[s.name]:.0f} s"
        print(f"  {i:2d}. {s.title} ({took})")
    all_done = all(s.done for s in steps)
    t_start = time.monotonic()
    for i, stage in enumerate(steps, 1):
        elapsed = time.monotonic() - t_start
        header = (f"\n[{i}/{len(steps)}] {stage.title}  (estimate ~{estimates[stage.name]:.0f} s; "
                  f"{elapsed / 60:.1f} min elapsed)")
        def say(text: str, h: str = header) -> None:
            print(h if text.endswith("...") else text, flush=True)

        try:
            run_stage(stage.folder, stage.name, stage.run, say=say)
        except (StageError, OSError, ValueError) as exc:
            print(f"wmpo demo: stage '{stage.name}' failed: {exc}\n(re-run the same command to continue from this "
                  "stage)", file=sys.stderr)
            return 1
    report = read_json(out / "report" / MARKER)
    if all_done:
        print_table(read_json(Path(report["report_json"]))["versions"])  # the table of the finished run
    print(f"\nwmpo demo: finished in {(time.monotonic() - t_start) / 60:.1f} min; report in {report['report_html']} "
          f"and {report['report_json']}")
    return 0
