"""Parallel (OpenVLA-OFT) vs autoregressive (OpenVLA) decoding of one action chunk, same model and inputs.

Also prints the parameter count and the behavior-cloning forward / forward+backward time per batch.
Run: ``python bench/bench_policy_decoding.py [--config config.json] [--batch 1] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLAPolicy


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: first call pays allocator and kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    """Print decoding and training timings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="policy config.json (default: the embedded tiny VLA)")
    parser.add_argument("--batch", type=int, default=1, help="observations decoded together")
    parser.add_argument("--train-batch", type=int, default=8, help="batch for the forward/backward timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = VLAConfig.load(args.config) if args.config else VLAConfig()
    policy = VLAPolicy(config).eval()
    rng = np.random.default_rng(0)

    def obs(n):
        images = [{c: rng.integers(0, 256, (config.image_size,) * 2 + (3,), dtype=np.uint8) for c in config.cameras}
                  for _ in range(n)]
        proprio = rng.normal(size=(n, config.proprio_dim)) if config.proprio_dim else None
        return policy.prepare_batch(images, ["lift the cube"] * n, proprio)

    batch = obs(args.batch)
    with torch.inference_mode():
        t_par = _time(lambda: policy.sample(batch, 0.0, decoding="parallel"), args.repeats)
        t_ar = _time(lambda: policy.sample(batch, 0.0, decoding="autoregressive"), args.repeats)
    seq = 1 + len(config.cameras) * config.patches_per_camera + int(batch.text_mask.sum(1).max())
    print(f"params: {policy.num_parameters():,}  prefix tokens: {seq}  action tokens: {config.num_action_tokens} "
          f"(K={config.chunk_size} x D={config.action_dim})  threads: {torch.get_num_threads()}")
    print(f"{'decoding (batch ' + str(args.batch) + ')':<28}{'seconds/chunk':>14}{'forward passes':>16}")
    print(f"{'parallel':<28}{t_par:>14.4f}{1:>16}")
    print(f"{'autoregressive (KV cache)':<28}{t_ar:>14.4f}{config.num_action_tokens:>16}")
    print(f"speedup parallel vs autoregressive: {t_ar / t_par:.1f}x")

    train_batch = obs(args.train_batch)
    tokens = torch.from_numpy(policy.action_tokenizer.encode(rng.uniform(-1, 1, (args.train_batch, config.num_action_tokens))))
    policy.train()
    for mode in ("parallel", "autoregressive"):
        with torch.no_grad():
            t_fwd = _time(lambda m=mode: policy(train_batch, tokens, decoding=m), args.repeats)

        def step(m=mode):
            policy.zero_grad(set_to_none=True)
            policy(train_batch, tokens, decoding=m)["loss"].backward()

        t_step = _time(step, args.repeats)
        print(f"BC {mode:<15} batch {args.train_batch}: forward {t_fwd:.4f} s, forward+backward {t_step:.4f} s")


if __name__ == "__main__":
    main()
