"""Does imagination rank policies as the simulator does? Imagined against real success of several policies.

GRPO trusts that a policy imagined to succeed more often succeeds more often for real. This imagines
every given policy from the same real first frames with the same seeds (trajectory ``g`` of start ``s``
draws from ``seed + s * G + g`` for every policy, so a pair differs only by the policy), scores the same
imagined trajectories with the video reward model and, if given, the world model's success head, and
prints each policy's imagined success rate beside its real one (a `wmpo eval --json` report of the same
policy, e.g. on held-out start states) and the paired differences against the first policy.

    python bench/imagined_vs_real.py --world-model WM --reward RM [--success-head HEAD] --starts DIR \
        --policy base=PKG --real base=eval_base.json --policy grpo=PKG2 --real grpo=eval_grpo.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what}: expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", required=True)
    parser.add_argument("--reward", required=True, help="video reward model (its calibrated tau and rule)")
    parser.add_argument("--success-head", help="also score with this success head")
    parser.add_argument("--starts", nargs="+", required=True, help="episode folder(s): their first frames start imagination")
    parser.add_argument("--policy", action="append", default=[], help="NAME=PACKAGE (the first is the reference)")
    parser.add_argument("--real", action="append", default=[], help="NAME=EVAL_JSON (wmpo eval --json of that policy)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--max-starts", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=777_000)
    args = parser.parse_args()
    policies, real = _pairs(args.policy, "--policy"), _pairs(args.real, "--real")
    if len(policies) < 2:
        raise SystemExit("--policy: give at least two policies")

    from scipy.stats import binomtest

    from wmpo_core.policy.loading import load_package
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.rl.rollouts import HeadReward, VideoReward, load_start_states
    from wmpo_core.world_model.imagine import VLAImaginationPolicy, imagine
    from wmpo_core.world_model.model import WorldModel
    from wmpo_core.world_model.success_head import load_success_head

    wm = WorldModel.from_pretrained(args.world_model)
    # GRPO's own rewards, so both score exactly as they do there.
    video_reward = VideoReward(RewardModel.from_pretrained(args.reward))
    head_reward = HeadReward(*load_success_head(args.success_head, args.world_model)) if args.success_head else None
    head = head_reward.success_head if head_reward is not None else None
    starts = load_start_states(args.starts, wm.settings.camera, wm.settings.image_size)
    keep = np.unique(np.linspace(0, len(starts) - 1, min(args.max_starts, len(starts))).round().astype(int))
    frames = np.repeat(starts.frames[keep], args.group_size, axis=0)
    seeds = [args.seed + i for i in range(len(frames))]
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    for name, package in policies.items():
        policy = load_package(package)
        adapter = VLAImaginationPolicy(policy, wm.settings.camera, args.temperature)
        imagined = imagine(wm, adapter, frames, starts.instructions[0], args.horizon, seeds, success_head=head)
        # As in GRPO: the last real frame, then the imagined ones.
        video = video_reward([f[imagined.context_frames - 1 :] for f in imagined.frames])
        outcomes[name] = {"video": np.array([ok for ok, _ in video], dtype=bool)}
        if head_reward is not None:
            outcomes[name]["head"] = np.array([ok for ok, _ in head_reward.from_probs(imagined.success_probs)])
        print(f"[imagined] {name}: " + ", ".join(f"{k} {v.mean():.3f}" for k, v in outcomes[name].items()), flush=True)
    reference = next(iter(policies))
    rows = []
    for name in policies:
        row: dict[str, object] = {"policy": name}
        if name in real:
            report = json.loads(open(real[name]).read())
            row["real"] = report["successes"] / report["episodes"]
            row["real_episodes"] = report["episodes"]
        for scorer, values in outcomes[name].items():
            row[f"imagined_{scorer}"] = float(values.mean())
            if name != reference:
                base = outcomes[reference][scorer]
                wins, losses = int((values & ~base).sum()), int((~values & base).sum())
                row[f"{scorer}_pairs"] = [wins, losses]
                row[f"{scorer}_p_two_sided"] = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        rows.append(row)
    print(json.dumps({"starts": len(keep), "group_size": args.group_size, "horizon": args.horizon,
                      "trajectories_per_policy": len(frames), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
