"""Imagined trajectories per second during GRPO in imagination (imagination + reward + update).

Runs the real trainer (``train_wmpo``) on randomly initialised models of the embedded
default size (VLA 64 px, tiny VAE + video transformer, tiny VideoMAE reward) from solid
start frames, and prints the throughput of every iteration and the split between
imagination and the policy update.
Run: ``python bench/bench_grpo.py [--iterations 3] [--horizon 16] [--starts 2] [--group 8] [--threads 0]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.reward.model import RewardModel, RewardSettings
from wmpo_core.rl.config import WMPOConfig
from wmpo_core.rl.grpo import GRPOConfig
from wmpo_core.rl.trainer_imagination import read_log, start_states_from_frames, train_wmpo
from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
from wmpo_core.world_model.transformer import VideoDiffusionTransformer
from wmpo_core.world_model.vae import TinyVAEConfig, make_tiny_vae


class MedianSplitReward:
    """Scores every clip with the (untrained) VideoMAE reward model, as training does, then calls the
    better half of the trajectories from each start frame a success, so that groups are mixed and
    every iteration runs its update."""

    def __init__(self, model: RewardModel):
        self.model = model

    def __call__(self, trajectories):
        scores = self.model.trajectory_scores(list(trajectories))
        by_start: dict[bytes, list[float]] = {}
        for s, t in zip(scores, trajectories, strict=True):
            by_start.setdefault(t[0].tobytes(), []).append(float(s))
        out = []
        for s, t in zip(scores, trajectories, strict=True):
            ok = bool(s > np.median(by_start[t[0].tobytes()]))
            out.append((ok, len(t) - 1 if ok else None))
        return out


def main() -> None:
    """Print trajectories per second of GRPO in imagination."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=16, help="imagined frames per trajectory")
    parser.add_argument("--starts", type=int, default=2, help="start states per sampling round")
    parser.add_argument("--group", type=int, default=8, help="G trajectories per start state")
    parser.add_argument("--inference-steps", type=int, default=10, help="DDIM steps per imagined chunk")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = make_tiny_vae(TinyVAEConfig()).eval()
    vae.requires_grad_(False)
    noise, sampler = make_schedulers()
    world_model = WorldModel(vae, VideoDiffusionTransformer().eval(), noise, sampler,
                             WorldModelSettings(num_inference_steps=args.inference_steps))
    policy = VLAPolicy(VLAConfig(), version="bench-base")
    reward = MedianSplitReward(RewardModel.tiny(RewardSettings()))
    levels = np.linspace(40, 220, 4).astype(np.uint8)
    starts = start_states_from_frames([np.full((64, 64, 3), v, np.uint8) for v in levels], "lift the red cube")
    config = WMPOConfig(grpo=GRPOConfig(group_size=args.group, minibatch_size=args.group * args.starts),
                        iterations=args.iterations, groups_per_batch=1, starts_per_round=args.starts,
                        max_sampling_rounds=1, horizon=args.horizon, checkpoint_every=10**6)
    print(f"policy {policy.num_parameters() / 1e6:.1f} M params, world model "
          f"{sum(p.numel() for p in world_model.transformer.parameters()) / 1e6:.1f} M params, "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_wmpo(policy, world_model, reward, starts, out, config, progress=False)
        total = time.perf_counter() - start
        rows = read_log(out)
    for r in rows:
        print(f"iteration {r['iteration']}: {r['imagined_trajectories']:.0f} trajectories x {args.horizon} frames, "
              f"imagination {r['imagination_seconds']:.2f} s, update {r['update_seconds']:.2f} s "
              f"({r['gradient_steps']:.0f} steps), {r['trajectories_per_second']:.2f} trajectories/s")
    n = sum(r["imagined_trajectories"] for r in rows)
    steady = rows[1:] or rows
    rate = sum(r["imagined_trajectories"] for r in steady) / sum(
        r["imagination_seconds"] + r["update_seconds"] for r in steady)
    print(f"imagined trajectories per second during GRPO: {rate:.2f} (steady state), "
          f"{n / total:.2f} including start-up and packaging ({n:.0f} in {total:.1f} s)")
    print(f"imagined frames per second: {rate * args.horizon:.1f}")


if __name__ == "__main__":
    main()
