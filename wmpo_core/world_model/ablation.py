"""`wmpo ablate-world-model`: what noisy-frame conditioning and policy behavior alignment buy, in one command.

Three world models share the VAE, the transformer config and the data, and differ in one
thing each (WMPO, Sec. 3.1-3.2):

- ``full``: pretrained on demonstrations with noisy context (context latents at step
  ``context_noise_step``), then aligned on the policy's own rollouts, noisy context again;
- ``no_noisy_context``: the same two stages with clean context (``context_noise_step = 0``),
  in training and in imagination;
- ``no_alignment``: the noisy-context pretraining alone.

All three then replay the real actions of held-out policy rollouts from their real first
frames (``evaluate_fidelity``, the same episodes, seeds and reference predictors in one run);
the table is fidelity per chunk position up to the horizon. Layout of ``--out``:
``pretrain/``, ``pretrain_clean/``, ``aligned/``, ``aligned_clean/`` (each a world-model run,
reused when finished, resumed when interrupted) and ``ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "world-model ablations: without noisy-frame conditioning, without behavior alignment (fidelity table)"
VARIANTS = ("full", "no_noisy_context", "no_alignment")


def _finished(run: Path) -> bool:
    return (run / "world_model.json").is_file()


def _train(episodes: list, out: Path, cfg: Any, *, vae: Path | None = None, init: Path | None = None,
           progress: bool = True) -> Path:
    from wmpo_core.world_model.train import train_world_model

    if not _finished(out):
        print(f"training {out} ({cfg.steps} steps, context noise step {cfg.context_noise_step}"
              f"{', aligned from ' + str(init) if init else ''})", file=sys.stderr, flush=True)
        train_world_model(episodes, out, cfg, vae_path=vae, init=init, progress=progress)
    return out


def run_ablation(demos: str | Path, rollouts: str | Path, heldout: str | Path, out: str | Path, *,
                 config: str | Path | None = None, vae: str | Path | None = None,
                 pretrained: str | Path | None = None, align_steps: int = 500, chunks: int = 4,
                 max_episodes: int = 16, progress: bool = True) -> dict[str, Any]:
    """Train what is missing, evaluate the three variants on ``heldout``, write and return ``ablation.json``."""
    import copy

    from wmpo_core.data.frames import load_episodes
    from wmpo_core.world_model.evaluate import evaluate_fidelity
    from wmpo_core.world_model.model import WorldModel
    from wmpo_core.world_model.train import WorldModelTrainConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if pretrained is not None:  # an existing noisy-context pretraining run stands in for pretrain/
        pretrained = Path(pretrained)
        if not _finished(pretrained):
            raise ValueError(f"{pretrained}: not a finished world-model run (no world_model.json)")
        cfg = WorldModelTrainConfig.from_json(pretrained / "train_config.json")
        vae = Path(vae) if vae else pretrained / "vae"
    else:
        cfg = WorldModelTrainConfig.from_json(config) if config else WorldModelTrainConfig()
        if vae is None:
            raise ValueError("--vae is needed to pretrain (all variants share one VAE)")
        vae = Path(vae)
    if cfg.context_noise_step <= 0:
        raise ValueError("the pretraining config has no noisy context (context_noise_step <= 0); nothing to ablate")
    demo_eps = load_episodes(demos, cfg.camera, cfg.image_size)
    rollout_eps = load_episodes(rollouts, cfg.camera, cfg.image_size)
    trained_on = {ep.episode_id for ep in demo_eps + rollout_eps}
    held = [ep for ep in load_episodes(heldout, cfg.camera, cfg.image_size) if ep.episode_id not in trained_on]
    if not held:
        raise ValueError(f"{heldout}: every episode was used in training; give held-out rollouts")

    clean = copy.deepcopy(cfg)
    clean.context_noise_step = 0
    align, align_clean = copy.deepcopy(cfg), copy.deepcopy(clean)
    align.steps = align_clean.steps = align_steps
    noisy_pre = pretrained or _train(demo_eps, out / "pretrain", cfg, vae=vae, progress=progress)
    clean_pre = _train(demo_eps, out / "pretrain_clean", clean, vae=vae, progress=progress)
    runs = {
        "full": _train(rollout_eps, out / "aligned", align, init=noisy_pre, progress=progress),
        "no_noisy_context": _train(rollout_eps, out / "aligned_clean", align_clean, init=clean_pre, progress=progress),
        "no_alignment": noisy_pre,
    }
    models = {name: WorldModel.from_pretrained(run) for name, run in runs.items()}
    report = evaluate_fidelity(models, held[:max_episodes], chunks=chunks)
    result = {
        "variants": {name: str(run) for name, run in runs.items()},
        "context_noise_step": cfg.context_noise_step, "align_steps": align_steps,
        "pretrain_steps": cfg.steps, "demos": len(demo_eps), "rollouts": len(rollout_eps),
        **report.to_dict(),
    }
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: PSNR / SSIM per chunk position for each variant and the two references."""
    per_chunk = result["per_chunk"]
    chunks = len(next(iter(per_chunk.values()))["psnr"])
    lines = ["| predictor | " + " | ".join(f"chunk {i + 1} PSNR / SSIM" for i in range(chunks)) + " |",
             "|---|" + "---|" * chunks]
    for name, m in per_chunk.items():
        cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in zip(m["psnr"], m["ssim"], strict=True))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines + [f"({len(result['episodes'])} held-out episodes; {n})" for n in result["notes"]])


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo ablate-world-model`."""
    parser.add_argument("--demos", required=True, nargs="+", help="demonstration episode folder(s) (pretraining data)")
    parser.add_argument("--rollouts", required=True, nargs="+", help="policy rollout folder(s) (alignment data)")
    parser.add_argument("--heldout", required=True, nargs="+", help="held-out policy rollout folder(s) to score fidelity on")
    parser.add_argument("--out", required=True, help="ablation directory (finished runs in it are reused)")
    parser.add_argument("--config", help="pretraining config (WorldModelTrainConfig JSON)")
    parser.add_argument("--vae", help="AutoencoderKL directory shared by every variant")
    parser.add_argument("--pretrained", help="an existing noisy-context pretraining run to reuse as pretrain/")
    parser.add_argument("--align-steps", type=int, default=500, help="alignment steps of each aligned variant (default 500)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of K frames to predict (default 4)")
    parser.add_argument("--max-episodes", type=int, default=16, help="held-out episodes scored (default 16)")
    parser.add_argument("--json", action="store_true", help="print ablation.json instead of the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Run the ablation and print its table."""
    try:
        result = run_ablation(args.demos, args.rollouts, args.heldout, args.out, config=args.config, vae=args.vae,
                              pretrained=args.pretrained, align_steps=args.align_steps, chunks=args.chunks,
                              max_episodes=args.max_episodes, progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        print(f"wmpo ablate-world-model: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
