"""`wmpo loop`: lifelong learning on one robot, collect -> align -> improve -> gate -> push (wmpo_core.loop)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.io_utils import StageError
from wmpo_core.loop import ITERATION_STAGES, Loop, config_default, config_from_args
from wmpo_core.pipeline.recipe import add_recipe_option

HELP = "lifelong learning: collect, align, improve, gate, push"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo loop`; their defaults are LoopConfig's."""
    d = config_default
    parser.add_argument("--iterations", type=int, required=True, help="iterations to have finished (a rerun resumes)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (created, or resumed when it exists)")
    parser.add_argument("--policy", required=True, help="first policy package (signed or not)")
    parser.add_argument("--task", default=d("task"), help=f"simulated task (default: {d('task')})")
    parser.add_argument("--robot", choices=("sim", "ros"), default=d("robot"),
                        help="sim: simulated robot (default); ros: a real robot whose recorder writes to --episodes-from")
    parser.add_argument("--episodes-per-iter", type=int, default=d("episodes_per_iter"),
                        help=f"episodes collected per iteration (default {d('episodes_per_iter')})")
    parser.add_argument("--temperature", type=float, default=d("temperature"),
                        help="policy sampling temperature for collection and the gate (0 = greedy; default "
                        f"{d('temperature')})")
    parser.add_argument("--steps-after-success", type=int, default=d("steps_after_success"),
                        help=f"steps recorded past a success, for the reward model (default {d('steps_after_success')})")
    parser.add_argument("--collect-direct", action="store_true",
                        help="sim: collect straight from the simulator instead of through the ROS 2 graph (faster)")
    parser.add_argument("--episodes-from", help="ros: folder where the robot's recorder writes episode bags")
    parser.add_argument("--demos", help="episodes added to every training set (e.g. the demonstrations)")
    parser.add_argument("--world-model", help="world-model run the first iteration aligns from (default: pretrain)")
    parser.add_argument("--candidates", help="folder of policy packages trained elsewhere: iteration i takes the "
                        "i-th (by name) instead of training one with GRPO; the loop only gates, pushes and watches")
    parser.add_argument("--max-steps", type=int, help="episode horizon for collection and the gate (default: the task's)")
    add_recipe_option(parser)
    parser.add_argument("--wm-config", help="JSON WorldModelTrainConfig for train-world-model (default: the recipe's)")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig for train-reward (default: the recipe's)")
    parser.add_argument("--grpo-config", help="JSON WMPOConfig for grpo (default: the recipe's)")
    parser.add_argument("--wm-steps", type=int, help="world-model steps per iteration")
    parser.add_argument("--reward-steps", type=int, help="reward-model steps per iteration")
    parser.add_argument("--grpo-iterations", type=int, help="GRPO iterations per loop iteration")
    parser.add_argument("--gate-episodes", type=int, default=d("gate_episodes"),
                        help=f"held-out start states of the gate (default {d('gate_episodes')})")
    parser.add_argument("--gate-alpha", type=float, default=d("gate_alpha"),
                        help=f"significance of the one-sided paired sign test of the gate (default {d('gate_alpha')}; "
                        "1 = any gain)")
    parser.add_argument("--key", help="Ed25519 private key PEM (default: a key pair made in RUN/keys)")
    parser.add_argument("--push-to", help="robot policy folder, DIR or HOST:DIR (default: RUN/robot/policies)")
    parser.add_argument("--load-node", help="policy node asked to load each pushed version (e.g. /policy); its "
                        "policy_root parameter must be the --push-to folder (docs/security.md)")
    parser.add_argument("--collect-timeout", type=float, default=d("collect_timeout_s"),
                        help="ros: seconds to wait for episodes")
    parser.add_argument("--no-screen", dest="screen", action="store_false",
                        help="ros: skip the imagination screen; every candidate goes to the canary (e.g. when the "
                        "imagined reward's AUC is near 0.5)")
    # ros: the screen's start states and the canary's sequential test (wmpo_core.canary)
    for flag, name, kind, text in (
            ("--screen-starts", "screen_starts", int,
             "held-out episodes whose first frames start the imagination screen (default {})"),
            ("--canary-odds-ratio", "canary_odds_ratio", float,
             "effect size the canary test is built for (default {:g}: 50%% vs 25%% or 75%% success)"),
            ("--canary-alpha", "canary_alpha", float,
             "bound on false promote and on false rollback at that effect size (default {})"),
            ("--canary-max-pairs", "canary_max_pairs", int,
             "most canary/current episode pairs per decision (default {}, twice as many episodes)")):
        parser.add_argument(flag, type=kind, default=d(name), help="ros: " + text.format(d(name)))
    parser.add_argument("--no-watch", dest="watch", action="store_false",
                        help="ros: no live watch of a promoted version (`wmpo loop-watch` can run it separately)")
    parser.add_argument("--watch-threshold", type=float, default=d("watch_threshold"),
                        help="ros: CUSUM level at which the live watch rolls a promoted version back (default "
                        f"{d('watch_threshold'):g}; bench/bench_canary.py prints its error rates)")
    parser.add_argument("--stop-after", choices=ITERATION_STAGES,
                        help="stop after this stage of the first unfinished iteration (a rerun continues)")

def main(args: argparse.Namespace) -> int:
    """Run or resume the loop; 1 with the failing stage's message."""
    if args.iterations < 1:
        print("wmpo loop: --iterations must be >= 1", file=sys.stderr)
        return 2
    loop = Loop(config_from_args(args))
    try:
        results = loop.run(args.iterations, stop_after=args.stop_after)
    except (StageError, OSError, ValueError) as exc:
        print(f"wmpo loop: {exc}", file=sys.stderr)
        return 1
    for r in results:
        pub = r["publish"]
        print(f"iteration {r['iteration']}: {r['gate']['decision']['reason']}; "
              + (f"pushed {pub['version']}" if pub["pushed"] else f"kept {pub['version']}"))
    print(f"wmpo loop: {len(results)} iteration(s) finished; version chain in {loop.versions.path}; "
          f"current version {loop.versions.current['version']}")
    return 0
