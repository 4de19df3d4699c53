"""Trajectory rules on full imagined replays (rung e of the ladder), with the episode-length control.

The reward model scores every clip of the real video and of the full imagined replay of each
held-out episode; this prints the AUC of the best clip at or after ``min_frame`` (the paper's
"any" rule) and of the last clip ("final"). Held-out failures often run the whole horizon while
successes stop soon after the outcome, so the "final" AUC is also computed with each failure read
at the end frame of a randomly drawn success's length (mean and 95% range over draws).

    python bench/ladder_rules.py --world-model WM --reward RM --episodes DIR [--draws 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from wmpo_core.data.frames import load_episodes, resize_frames
from wmpo_core.reward.model import RewardModel
from wmpo_core.reward.train import imagined_replays, roc_auc
from wmpo_core.world_model.model import WorldModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", required=True)
    parser.add_argument("--reward", required=True)
    parser.add_argument("--episodes", nargs="+", required=True)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="imagination seed (the ladder's default is 0)")
    args = parser.parse_args()

    wm = WorldModel.from_pretrained(args.world_model)
    reward = RewardModel.from_pretrained(args.reward)
    episodes = [ep for ep in load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
                if ep.success is not None and len(ep.frames) > wm.context_frames]
    labels = np.array([bool(ep.success) for ep in episodes])
    lengths = np.array([len(ep.frames) for ep in episodes])
    replays = [r.frames for r in imagined_replays(wm, episodes, args.seed)]
    size, min_frame = reward.settings.image_size, reward.settings.min_frame
    print(f"{len(episodes)} episodes ({labels.sum()} successes); success lengths "
          f"{np.percentile(lengths[labels], [0, 50, 100]).astype(int).tolist()}, failure lengths "
          f"{np.percentile(lengths[~labels], [0, 50, 100]).astype(int).tolist()}; min_frame {min_frame}")
    rng = np.random.default_rng(0)
    for name, videos in (("real video", [ep.frames for ep in episodes]), ("full imagined replay", replays)):
        clips = [reward.clip_scores(resize_frames(v, size)) for v in videos]
        any_auc = roc_auc([reward.score_clips(e, s, "any") for e, s in clips], labels)
        final_auc = roc_auc([reward.score_clips(e, s, "final") for e, s in clips], labels)
        controlled = []
        for _ in range(args.draws):
            scores = []
            for (ends, s), ok in zip(clips, labels, strict=True):
                if ok:
                    scores.append(s[-1])
                else:  # the failure read where a success of a drawn length would have ended
                    end = int(rng.choice(lengths[labels])) - 1
                    scores.append(s[ends <= end][-1])
            controlled.append(roc_auc(scores, labels))
        lo, hi = np.percentile(controlled, [2.5, 97.5])
        print(f"{name:<22} AUC any clip {any_auc:.3f}  final clip {final_auc:.3f}  "
              f"final clip, failures cut to success lengths {np.mean(controlled):.3f} [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
