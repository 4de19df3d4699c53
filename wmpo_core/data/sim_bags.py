"""Episode bags straight from the simulator, without ROS: the same schema the episode recorder writes.

``collect_sim_episodes`` runs the scripted demonstrator (or a policy package) in the
simulator and writes one bag per episode; ``write_sim_episode`` turns one
:class:`~wmpo_core.sim.rollout.EpisodeResult` into a bag. Stamps follow the control
period exactly, as a recorder on a perfectly timed robot would see them: frame ``t`` is
stamped ``start + t / control_hz``, the chunk planned from it carries that stamp, and
the applied action ``t`` follows 5 ms later, so ``load_episode`` aligns them as it does
for recorded bags (docs/interfaces.md "Episode bags").
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

if TYPE_CHECKING:
    from wmpo_core.sim.rollout import EpisodeResult

log = logging.getLogger(__name__)

# Offsets of a recorder's receive (log) times after the observation stamp, as on a live graph.
IMAGE_DELAY_NS = 1_000_000
CHUNK_DELAY_NS = 3_000_000
APPLIED_DELAY_NS = 5_000_000
# Sampling seed of repeat r of a start state: seed + r * stride, far from any other start state's seed.
SEED_REPEAT_STRIDE = 1_000_003
# robosuite's agentview and eye-in-hand cameras have a 45 degree vertical field of view.
DEFAULT_FOVY_DEG = 45.0


@dataclass
class PlannedChunk:
    """A chunk the policy returned at control step ``step`` (before the action of that step ran)."""

    step: int
    actions: np.ndarray


def write_sim_episode(
    result: EpisodeResult,
    out_dir: str | os.PathLike[str],
    metadata: EpisodeMetadata,
    chunks: Sequence[PlannedChunk] | None = None,
    *,
    start_ns: int | None = None,
    fovy_deg: float | Mapping[str, float] = DEFAULT_FOVY_DEG,
    joint_names: Sequence[str] | None = None,
) -> Path:
    """Write one simulated episode as a bag in ``out_dir``; returns the bag directory.

    ``result`` must hold frames (``run_episode(record_frames=True)``). ``chunks`` are the
    policy's chunks with the step they were planned at; without them the executed actions
    are published as consecutive chunks of 8 steps. The success label of the
    bag is ``result.success``; ``metadata.success`` is overwritten with it.
    """
    if not result.frames:
        raise ValueError("write_sim_episode: the episode has no frames (run it with record_frames=True)")
    n = int(result.length)
    for cam, frames in result.frames.items():
        if len(frames) != n + 1:
            raise ValueError(f"write_sim_episode: camera {cam!r} has {len(frames)} frames, expected length + 1 = {n + 1}")
    if len(result.applied_actions) != n:
        raise ValueError(f"write_sim_episode: {len(result.applied_actions)} applied actions, expected {n}")
    if joint_names is None:
        from wmpo_core.sim.env import JOINT_NAMES

        joint_names = JOINT_NAMES
    hz = float(metadata.control_hz)
    period = round(1e9 / hz)
    t0 = time.time_ns() if start_ns is None else int(start_ns)
    if chunks is None:
        chunks = [PlannedChunk(s, result.actions[s : s + 8]) for s in range(0, n, 8)]

    writer = EpisodeWriter(out_dir, metadata, start_ns=t0 - 1, flush_interval_s=None)
    try:
        writer.write(T.INSTRUCTION, t0 - 1, T.string_msg(metadata.instruction))
        writer.write(T.POLICY_VERSION, t0 - 1, T.string_msg(metadata.policy_version))
        for cam, frames in result.frames.items():
            h, w = frames.shape[1:3]
            fovy = fovy_deg.get(cam, DEFAULT_FOVY_DEG) if isinstance(fovy_deg, Mapping) else fovy_deg
            fy = (h / 2.0) / math.tan(math.radians(fovy) / 2.0)
            writer.write(T.camera_info_topic(cam), t0, T.camera_info_msg(t0, w, h, fy, fy, cam))
        by_step = {int(c.step): np.asarray(c.actions, dtype=np.float64) for c in chunks}
        for t in range(n + 1):
            obs_ns = t0 + t * period
            for cam, frames in result.frames.items():
                writer.write(T.camera_image_topic(cam), obs_ns + IMAGE_DELAY_NS, T.image_msg(obs_ns, frames[t], cam))
            writer.write(T.JOINT_STATES, obs_ns + IMAGE_DELAY_NS,
                         T.joint_state_msg(obs_ns, list(joint_names), result.joint_positions[t]))
            # As the simulated robot node does: the success check of every observation, sent with it.
            if result.success_flags is not None:
                done = bool(result.success_flags[t])
            else:
                done = result.success_step is not None and t >= result.success_step
            writer.write(T.SUCCESS, obs_ns + IMAGE_DELAY_NS, T.bool_msg(done))
            if t == n:
                break
            if t in by_step and len(by_step[t]):
                writer.write(T.ACTION_CHUNK, obs_ns + CHUNK_DELAY_NS, T.action_chunk_msg(obs_ns, by_step[t], hz))
            applied_ns = obs_ns + APPLIED_DELAY_NS
            writer.write(T.APPLIED_ACTION, applied_ns, T.applied_action_msg(applied_ns, result.applied_actions[t]))
        end_ns = t0 + n * period + APPLIED_DELAY_NS + 1
        writer.set_label(bool(result.success))
        return writer.close(end_ns)
    except BaseException:
        writer.close()
        raise


def _policy_source(policy: str, task: str, noise: float, seed: int, temperature: float = 0.0) -> tuple[Any, str, Any]:
    """(chunk_fn(obs, instruction) -> (K, 7), policy version, reset(seed))."""
    if policy == "scripted":
        from wmpo_core.sim import make_demonstrator

        demo = make_demonstrator(task, noise=noise, seed=seed)
        return (lambda obs, instruction: demo.plan_chunk(obs, k=8)), f"scripted-noise{noise:g}", demo.reset
    from wmpo_core.policy.loading import load_policy

    loaded = load_policy(policy)
    needs_proprio = loaded.config.proprio_dim > 0

    def fn(obs, instruction):
        return loaded.predict_chunk(obs.images, instruction, obs.joint_positions if needs_proprio else None,
                                    temperature=temperature)

    return fn, loaded.version, lambda seed=None: loaded.reset()


def collect_sim_episodes(
    task: str,
    n: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    noise: float = 0.0,
    policy: str = "scripted",
    cameras: Sequence[str] = ("agentview",),
    image_size: int = 64,
    *,
    max_steps: int | None = None,
    steps_after_success: int = 0,
    temperature: float = 0.0,
    repeats: int = 1,
    progress: bool = True,
    jobs: int = 1,
) -> list[Path]:
    """Run ``n`` episodes and write one bag each into ``out_dir``.

    Start-state seeds are ``seed .. seed + n / repeats - 1``, each run ``repeats`` times in a row (a
    group of rollouts from one start state, as GRPO and DPO pair them). ``policy`` is ``"scripted"``
    (the task's demonstrator with ``noise`` in [0, 1]; its per-episode noise is seeded by the episode
    seed) or a policy package / model directory, greedy at ``temperature`` 0 and sampled otherwise
    (torch seeded with the episode seed, and the repeat index, as ``wmpo eval`` does). Returns the bag paths.

    With ``jobs`` > 1 the start states are split into that many contiguous ranges, each collected in a
    spawned process with its own simulator and one torch thread: the same episodes as with one job,
    since each depends on its seed (and repeat) only. Each process prints a line per finished episode.
    """
    if n <= 0:
        raise ValueError(f"n: expected a positive number of episodes, got {n!r}")
    if repeats < 1 or n % repeats:
        raise ValueError(f"repeats: expected a positive divisor of the {n} episodes, got {repeats!r}")
    if repeats > 1 and policy == "scripted" and noise == 0:
        raise ValueError("repeats: a noise-free scripted demonstrator repeats the same episode; give --noise")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success: expected >= 0, got {steps_after_success!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive number of processes, got {jobs!r}")
    kwargs: dict[str, Any] = {"noise": noise, "policy": policy, "cameras": tuple(cameras), "image_size": image_size,
                              "max_steps": max_steps, "steps_after_success": steps_after_success,
                              "temperature": temperature, "repeats": repeats}
    jobs = min(jobs, n // repeats)
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        bounds = np.linspace(0, n // repeats, jobs + 1).round().astype(int)
        # spawn, not fork: the parent may hold torch's thread pool; a worker's failure is raised here.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as executor:
            futures = [executor.submit(_collect_in_process, task, int(b - a) * repeats, str(out_dir),
                                       seed + int(a), seed, progress, kwargs)
                       for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            parts = [f.result() for f in futures]
        return [path for part in parts for path in part]
    return _collect(task, n, out_dir, seed, seed, progress=progress, lines=False, **kwargs)


def _collect_in_process(task: str, n: int, out_dir: str, seed: int, first_seed: int, progress: bool,
                        kwargs: dict[str, Any]) -> list[Path]:
    """Worker of :func:`collect_sim_episodes` with ``jobs`` > 1: one torch thread, a line per episode."""
    import torch

    torch.set_num_threads(1)
    return _collect(task, n, out_dir, seed, first_seed, progress=progress, lines=True, **kwargs)


def _collect(task: str, n: int, out_dir: str | os.PathLike[str], seed: int, first_seed: int, *, noise: float, policy: str,
             cameras: tuple[str, ...], image_size: int, max_steps: int | None, steps_after_success: int,
             temperature: float, repeats: int, progress: bool, lines: bool) -> list[Path]:
    """The episodes of seeds ``seed ..`` of :func:`collect_sim_episodes` (checked arguments) in this process.

    ``first_seed`` is the whole collection's: the scripted demonstrator's noise streams derive from it.
    """
    import torch
    from tqdm import tqdm

    from wmpo_core.sim import make_env, run_episode

    fn, version, reset = _policy_source(policy, task, noise, first_seed, temperature)
    env = make_env(task, image_size=image_size, cameras=tuple(cameras), max_steps=max_steps)
    paths: list[Path] = []
    successes = 0
    try:
        bar = tqdm(range(n), desc=f"collect {task}", disable=not progress or lines, dynamic_ncols=True)
        for i in bar:
            s, repeat = seed + i // repeats, i % repeats
            reset(s + repeat * SEED_REPEAT_STRIDE)  # the demonstrator's noise differs between repeats
            # Sampled actions depend on the episode seed (and repeat) only.
            torch.manual_seed(s + repeat * SEED_REPEAT_STRIDE)
            planned: list[PlannedChunk] = []

            def chunk_fn(obs, planned=planned):
                chunk = np.asarray(fn(obs, env.instruction), dtype=np.float64)
                planned.append(PlannedChunk(int(obs.step), chunk.reshape(-1, chunk.shape[-1])))
                return chunk

            result = run_episode(env, chunk_fn, seed=s, steps_after_success=steps_after_success)
            metadata = EpisodeMetadata.new(task, env.instruction, seed=s, policy_version=version,
                                           control_hz=float(env.control_hz),
                                           extra={"source": "sim-direct", "noise": float(noise),
                                                  "temperature": float(temperature), "repeat": repeat})
            paths.append(write_sim_episode(result, out_dir, metadata, planned,
                                           fovy_deg={c: env.camera_fovy(c) for c in env.cameras}))
            successes += int(result.success)
            bar.set_postfix(success=f"{successes}/{i + 1}")
            if progress and lines:
                print(f"collect {task}: seed {s} {'success' if result.success else 'failure'} after "
                      f"{result.length} steps ({i + 1}/{n} of seeds {seed}-{seed + (n - 1) // repeats})",
                      file=sys.stderr, flush=True)
    finally:
        env.close()
    log.info("collected %d %s episodes into %s: %d successful", n, task, out_dir, successes)
    return paths
