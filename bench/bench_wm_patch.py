"""World-model token grid: the cost of a finer patch, measured side by side.

    python bench/bench_wm_patch.py [--patches 4 2] [--batch 8] [--reps 5] [--json]

At 64 px the frame autoencoder gives 16 x 16 latents; the 64 px recipe (`sim64.json`) cuts
them into 4 x 4 patches, so each transformer token covers 16 x 16 pixels of the frame, while
the lift cube is a few pixels across. This prints, for each patch size, the tokens per frame,
the pixels per token, the parameters, and the seconds of one training step (forward and
backward on a batch of windows) and of one imagined chunk (the sampler's denoising passes for
a group of trajectories), in rounds that alternate the sizes, with each size's ratio to the
first. Weights are random (speed does not depend on them); the other sizes are the recipe's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from wmpo_core.world_model.transformer import VideoDiffusionTransformer

IMAGE_SIZE, LATENT_SIZE, LATENT_CHANNELS = 64, 16, 4
RECIPE = {"hidden_size": 128, "depth": 4, "num_heads": 4, "context_frames": 4, "chunk_size": 8,
          "action_in_tokens": True, "cumulative_actions": True}


def build(patch: int) -> VideoDiffusionTransformer:
    torch.manual_seed(0)
    model = VideoDiffusionTransformer(latent_channels=LATENT_CHANNELS, latent_size=LATENT_SIZE, patch_size=patch,
                                      **RECIPE)
    for block in model.blocks:  # zero-initialized adaLN would make every block the identity
        torch.nn.init.normal_(block.modulation[1].weight, std=0.02)
    return model


def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frames = RECIPE["context_frames"] + RECIPE["chunk_size"]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((batch, frames, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), generator=g)
    timesteps = torch.randint(0, 1000, (batch, frames), generator=g)
    actions = torch.randn((batch, RECIPE["chunk_size"], 7), generator=g) * 0.01
    return latents, timesteps, actions


def train_step(model: VideoDiffusionTransformer, optimizer: torch.optim.Optimizer, batch: int) -> float:
    latents, timesteps, actions = inputs(batch)
    t0 = time.perf_counter()
    out = model(latents, timesteps, actions)
    loss = torch.nn.functional.mse_loss(out, latents)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t0


@torch.no_grad()
def imagine_chunk(model: VideoDiffusionTransformer, batch: int, denoising_steps: int) -> float:
    latents, timesteps, actions = inputs(batch)
    t0 = time.perf_counter()
    for _ in range(denoising_steps):
        model(latents, timesteps, actions)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--batch", type=int, default=8, help="windows per training step and trajectories per group")
    parser.add_argument("--denoising-steps", type=int, default=10, help="sampler passes per imagined chunk")
    parser.add_argument("--reps", type=int, default=5, help="alternating rounds (the median is reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    models = {p: build(p) for p in args.patches}
    optimizers = {p: torch.optim.AdamW(m.parameters(), lr=1e-4) for p, m in models.items()}
    for p in args.patches:  # warm-up, not timed
        train_step(models[p], optimizers[p], args.batch)
        imagine_chunk(models[p], args.batch, 1)
    times: dict[int, dict[str, list[float]]] = {p: {"train": [], "imagine": []} for p in args.patches}
    for _ in range(args.reps):
        for p in args.patches:
            times[p]["train"].append(train_step(models[p], optimizers[p], args.batch))
            times[p]["imagine"].append(imagine_chunk(models[p], args.batch, args.denoising_steps))

    rows = []
    first = args.patches[0]
    for p in args.patches:
        grid = LATENT_SIZE // p
        row = {"patch": p, "tokens_per_frame": grid * grid, "pixels_per_token": IMAGE_SIZE // grid,
               "params_millions": round(sum(x.numel() for x in models[p].parameters()) / 1e6, 3),
               "train_step_s": round(statistics.median(times[p]["train"]), 4),
               "imagined_chunk_s": round(statistics.median(times[p]["imagine"]), 4)}
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["train_ratio"] = round(row["train_step_s"] / base["train_step_s"], 2)
        row["imagine_ratio"] = round(row["imagined_chunk_s"] / base["imagined_chunk_s"], 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"batch {args.batch}, {args.denoising_steps} denoising passes per chunk, median of {args.reps} "
          f"alternating rounds; ratios against patch {first}")
    for r in rows:
        print(f"patch {r['patch']}: {r['tokens_per_frame']:3d} tokens/frame ({r['pixels_per_token']} px each), "
              f"{r['params_millions']} M params | train step {r['train_step_s']:.3f} s ({r['train_ratio']}x) | "
              f"imagined chunk {r['imagined_chunk_s']:.3f} s ({r['imagine_ratio']}x)")


if __name__ == "__main__":
    main()
