"""Batched imagination (G trajectories at once) vs the same G one at a time: frames/s and the ratio.

    python bench/bench_imagination.py [--model RUN] [--policy DIR] [--group 8] [--horizon 16]

Without --model / --policy the embedded default sizes are built with random weights (speed
does not depend on the weights). Both modes use the same seeds, so their outputs are also
compared.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from wmpo_core.world_model.imagine import VLAImaginationPolicy, imagine
from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
from wmpo_core.world_model.synthetic import moving_square_episode
from wmpo_core.world_model.transformer import VideoDiffusionTransformer
from wmpo_core.world_model.vae import make_tiny_vae


def _default_world_model() -> WorldModel:
    torch.manual_seed(0)
    vae = make_tiny_vae().eval()
    noise, sampler = make_schedulers()
    wm = WorldModel(vae, VideoDiffusionTransformer().eval(), noise, sampler, WorldModelSettings())
    # Random non-zero adaLN weights so the transformer does its full work (zero-init would be the identity).
    for block in wm.transformer.blocks:
        torch.nn.init.normal_(block.modulation[1].weight, std=0.02)
    return wm


def _default_policy(camera: str, image_size: int, chunk: int) -> VLAImaginationPolicy:
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy

    torch.manual_seed(0)
    return VLAImaginationPolicy(VLAPolicy(VLAConfig(image_size=image_size, chunk_size=chunk)).eval(), camera, 1.6)


class _PhaseTimer:
    """Accumulates wall time spent in the policy, the diffusion sampler and the VAE."""

    def __init__(self, wm: WorldModel, policy) -> None:
        self.seconds = {"policy": 0.0, "diffusion": 0.0, "vae": 0.0}
        self._wrap(policy, "sample_chunk", "policy")
        self._wrap(wm, "predict_chunk", "diffusion")
        self._wrap(wm, "decode", "vae")
        self._wrap(wm, "encode", "vae")

    def _wrap(self, obj, name: str, phase: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out = {k: round(v, 2) for k, v in self.seconds.items()}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out


def main() -> None:
    """Run both modes and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="world-model run (default: embedded sizes, random weights)")
    parser.add_argument("--policy", help="policy checkpoint directory (default: embedded VLA, random weights)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    wm = WorldModel.from_pretrained(args.model) if args.model else _default_world_model()
    size, k = wm.settings.image_size, wm.chunk_size
    if args.policy:
        from wmpo_core.world_model.commands.imagine import load_policy_for_imagination

        policy = load_policy_for_imagination(args.policy, wm.settings.camera, 1.6)
    else:
        policy = _default_policy(wm.settings.camera, size, k)
    start = moving_square_episode(2, 0, size).frames[None, :1]
    seeds = list(range(args.group))
    imagine(wm, policy, start, "lift the cube", k, seeds=[0])  # warm-up
    timer = _PhaseTimer(wm, policy)

    t0 = time.perf_counter()
    batched = imagine(wm, policy, np.repeat(start, args.group, axis=0), "lift the cube", args.horizon, seeds)
    t_batched = time.perf_counter() - t0
    phases_batched = timer.take()
    t0 = time.perf_counter()
    singles = [imagine(wm, policy, start, "lift the cube", args.horizon, [s]) for s in seeds]
    t_single = time.perf_counter() - t0
    phases_single = timer.take()

    frames = args.group * args.horizon
    worst = max(int(np.abs(s.frames[0].astype(int) - batched.frames[i].astype(int)).max()) for i, s in enumerate(singles))
    same_tokens = all(torch.equal(s.tokens[0], batched.tokens[i]) for i, s in enumerate(singles))
    result = {
        "group": args.group, "horizon": args.horizon, "image_size": size, "chunk": k,
        "transformer_params_millions": sum(p.numel() for p in wm.transformer.parameters()) / 1e6,
        "batched_s": t_batched, "one_at_a_time_s": t_single,
        "batched_frames_per_s": frames / t_batched, "one_at_a_time_frames_per_s": frames / t_single,
        "speedup": t_single / t_batched, "max_frame_diff": worst, "same_tokens": same_tokens,
        "torch_threads": torch.get_num_threads(),
        "batched_phases_s": phases_batched, "one_at_a_time_phases_s": phases_single,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"imagination of {args.group} trajectories x {args.horizon} frames ({size}px, K={k}, "
          f"{result['transformer_params_millions']:.2f} M transformer params, {result['torch_threads']} threads)")
    print(f"{'mode':<20}{'seconds':>9}{'frames/s':>10}   time in policy / diffusion / VAE (s)")
    for name, secs, phases in (("batched (G at once)", t_batched, phases_batched),
                               ("one at a time", t_single, phases_single)):
        print(f"{name:<20}{secs:>9.2f}{frames / secs:>10.2f}   "
              f"{phases['policy']:.2f} / {phases['diffusion']:.2f} / {phases['vae']:.2f}")
    print(f"ratio batched / one-at-a-time throughput: {result['speedup']:.2f}x; "
          f"same tokens: {same_tokens}; max frame difference: {worst} grey levels")


if __name__ == "__main__":
    main()
