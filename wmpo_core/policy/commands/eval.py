"""`wmpo eval`: closed-loop evaluation of a policy in the simulator."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo_core.policy.placement import DEVICE_HELP, DTYPE_HELP, DTYPES
from wmpo_core.stats import wilson_interval  # re-exported: older imports

HELP = "evaluate a policy closed loop in the simulator"


@dataclass
class EvalReport:
    """Outcome of :func:`evaluate_policy`."""

    task: str
    policy: str
    episodes: int
    successes: int
    mean_length: float
    seeds: list[int]
    per_episode: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes."""
        return self.successes / self.episodes if self.episodes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` output."""
        lo, hi = wilson_interval(self.successes, self.episodes)
        return {
            "task": self.task, "policy": self.policy, "success_rate": self.success_rate, "ci95": [lo, hi],
            "episodes": self.episodes, "successes": self.successes, "mean_length": self.mean_length,
            "seeds": self.seeds, "seconds": round(self.seconds, 2), "per_episode": self.per_episode,
        }


def make_policy_fn(policy_arg: str, task: str, seed: int, temperature: float = 0.0, device: str | None = None,
                   dtype: str | None = None):
    """(policy_fn(obs, instruction) -> (K, 7), label, image size, cameras, reset()) for a package dir or ``scripted``."""
    if policy_arg == "scripted":
        from wmpo_core.sim import make_demonstrator

        demo = make_demonstrator(task, noise=0.0, seed=seed)
        return (lambda obs, instruction: demo.plan_chunk(obs, k=8)), "scripted", 64, ("agentview",), demo.reset
    from wmpo_core.policy.loading import load_policy

    policy = load_policy(policy_arg, device=device, dtype=dtype)
    needs_proprio = policy.config.proprio_dim > 0

    def fn(obs, instruction):
        proprio = obs.joint_positions if needs_proprio else None
        return policy.predict_chunk(obs.images, instruction, proprio, temperature=temperature)

    return fn, policy.version, policy.config.image_size, policy.config.cameras, policy.reset


def evaluate_policy(policy_arg: str, task: str, episodes: int, seed: int, video_dir: Path | None = None,
                    max_steps: int | None = None, temperature: float = 0.0, progress: bool = True,
                    jobs: int = 1, device: str | None = None, dtype: str | None = None) -> EvalReport:
    """Run ``episodes`` seeded episodes (seeds ``seed .. seed+episodes-1``) and count successes.

    With ``jobs`` > 1 the seeds are split into that many contiguous ranges, each run in a spawned
    process with its own simulator and one torch thread. The report is the same as with one job:
    every episode is seeded by its start state (simulator and sampling alike).
    """
    if episodes < 1:
        raise ValueError(f"--episodes: expected a positive number, got {episodes}")
    if jobs < 1:
        raise ValueError(f"--jobs: expected a positive number of processes, got {jobs}")
    start = time.perf_counter()
    seeds = [seed + i for i in range(episodes)]
    jobs = min(jobs, episodes)
    if jobs == 1:
        label, per_episode = _evaluate_seeds(policy_arg, task, seeds, seed, episodes, video_dir, max_steps,
                                             temperature, progress, device, dtype)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        bounds = np.linspace(0, episodes, jobs + 1).round().astype(int)
        chunks = [seeds[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        # spawn, not fork: the parent may hold torch's thread pool; a worker's failure is raised here.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as executor:
            futures = [executor.submit(_evaluate_seeds_in_process, policy_arg, task, chunk, seed, episodes,
                                       video_dir, max_steps, temperature, progress, device, dtype)
                       for chunk in chunks]
            parts = [f.result() for f in futures]
        label = parts[0][0]
        per_episode = [row for _, rows in parts for row in rows]
    return EvalReport(task, label, episodes, sum(r["success"] for r in per_episode),
                      float(np.mean([r["length"] for r in per_episode])), seeds, per_episode,
                      time.perf_counter() - start)


def _evaluate_seeds(policy_arg: str, task: str, seeds: list[int], first_seed: int, total: int,
                    video_dir: Path | None, max_steps: int | None, temperature: float,
                    progress: bool, device: str | None = None, dtype: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(policy label, one row per seed): the episodes of ``seeds`` in one simulator."""
    from wmpo_core.sim import make_env, run_episode

    fn, label, image_size, cameras, reset = make_policy_fn(policy_arg, task, first_seed, temperature, device, dtype)
    env = make_env(task, image_size=image_size, cameras=tuple(cameras))
    per_episode = []
    try:
        for s in seeds:
            reset()
            torch.manual_seed(s)  # sampled actions (temperature > 0) depend on the episode seed only, not on batching
            result = run_episode(env, lambda obs: fn(obs, env.instruction), seed=s, max_steps=max_steps,
                                 record_frames=video_dir is not None)
            row = {"seed": s, "success": bool(result.success), "length": int(result.length),
                   "success_step": result.success_step}
            if video_dir is not None:
                row["video"] = str(write_video(video_dir / f"{task}_seed{s}_{'ok' if result.success else 'fail'}.mp4",
                                               result.frames, env.control_hz))
            per_episode.append(row)
            if progress:
                print(f"episode {s - first_seed + 1}/{total} seed {s}: {'success' if result.success else 'failure'} "
                      f"after {result.length} steps", file=sys.stderr, flush=True)
    finally:
        env.close()
    return label, per_episode


def _evaluate_seeds_in_process(*args: Any) -> tuple[str, list[dict[str, Any]]]:
    """Worker of :func:`evaluate_policy` with ``jobs`` > 1: :func:`_evaluate_seeds` with one torch thread."""
    torch.set_num_threads(1)
    return _evaluate_seeds(*args)


def write_video(path: Path, frames: dict[str, np.ndarray], fps: float) -> Path:
    """Cameras side by side, one mp4 (H.264 through imageio-ffmpeg)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.concatenate([frames[c] for c in sorted(frames)], axis=2)
    scale = max(1, 256 // video.shape[1])  # upscale tiny frames so players show them
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimwrite(path, list(video), fps=fps, macro_block_size=1)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the command-line options."""
    parser.add_argument("--policy", required=True,
                        help="policy package, model directory or OpenVLA checkpoint, or 'scripted' (the demonstrator)")
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="first start-state seed")
    parser.add_argument("--max-steps", type=int, help="episode horizon (default: the task's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="policy sampling temperature (0 = greedy)")
    parser.add_argument("--video", type=Path, help="write one mp4 per episode into this folder")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no per-episode progress lines on stderr")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes, each with its own simulator and one torch thread, over contiguous "
                             "seed ranges (the report does not depend on it)")


def main(args: argparse.Namespace) -> int:
    """Evaluate and print the report."""
    try:
        report = evaluate_policy(args.policy, args.task, args.episodes, args.seed, args.video, args.max_steps,
                                 args.temperature, progress=not args.quiet, jobs=args.jobs, device=args.device,
                                 dtype=args.dtype)
    except (ValueError, FileNotFoundError) as exc:
        print(f"wmpo eval: {exc}", file=sys.stderr)
        return 2
    out = report.to_json()
    if args.json:
        print(json.dumps(out))
    else:
        lo, hi = out["ci95"]
        print(f"{args.task} / {report.policy}: success {report.successes}/{report.episodes} = "
              f"{report.success_rate:.1%} (95% CI {lo:.1%}-{hi:.1%}), mean length {report.mean_length:.1f}")
    return 0
