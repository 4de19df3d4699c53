"""Toy episodes with known dynamics, for tests and benchmarks: a square that moves by the actions.

The square's position integrates ``ee_dx`` / ``ee_dy`` and its colour follows the gripper
command, so a model that ignores actions cannot predict the frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wmpo_core.data.frames import EpisodeFrames


def moving_square_episode(
    length: int, seed: int, image_size: int = 64, square: int | None = None, success: bool | None = None
) -> EpisodeFrames:
    """One episode: random smooth actions in physical units, frames rendered from the integrated position."""
    rng = np.random.default_rng(seed)
    square = square or max(image_size // 5, 3)
    actions = np.zeros((length, 7), np.float32)
    direction = rng.uniform(-1, 1, size=2)
    for t in range(length):
        if t % 8 == 0:
            direction = rng.uniform(-1, 1, size=2)
        actions[t, :2] = 0.05 * direction
        actions[t, 6] = 1.0 if (t // 16) % 2 else -1.0
    pos = rng.uniform(square, image_size - 2 * square, size=2)
    frames = np.zeros((length, image_size, image_size, 3), np.uint8)
    frames[..., :] = (40, 40, 60)
    pixels_per_metre = image_size / 20 / 0.05  # a full-scale action moves the square 1/20 of the frame
    for t in range(length):
        x, y = int(round(pos[0])), int(round(pos[1]))
        colour = (230, 80, 40) if t == 0 or actions[t - 1, 6] < 0 else (40, 200, 90)
        frames[t, y : y + square, x : x + square] = colour
        pos = np.clip(pos + actions[t, :2] * pixels_per_metre, 0, image_size - square)
    return EpisodeFrames(episode_id=f"square-{seed:04d}", frames=frames, actions=actions, success=success,
                         instruction="move the square")


def moving_square_episodes(count: int, length: int, seed: int = 0, image_size: int = 64) -> list[EpisodeFrames]:
    """``count`` toy episodes with consecutive seeds."""
    return [moving_square_episode(length, seed + i, image_size) for i in range(count)]


def write_episode_bag(out_dir: str | Path, episode: EpisodeFrames, camera: str = "agentview",
                      control_hz: float = 20.0, start_ns: int = 1_700_000_000_000_000_000) -> Path:
    """Record ``episode`` as a real rosbag2 MCAP episode (image, applied action, success label), as the recorder does."""
    from wmpo_core.data import topics as T
    from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

    period = round(1e9 / control_hz)
    meta = EpisodeMetadata.new("toy", episode.instruction or "move the square", episode_id=episode.episode_id,
                               policy_version="synthetic", control_hz=control_hz)
    writer = EpisodeWriter(out_dir, meta, start_ns=start_ns - 1)
    writer.write(T.INSTRUCTION, start_ns - 1, T.string_msg(meta.instruction))
    for t, (frame, action) in enumerate(zip(episode.frames, episode.actions, strict=True)):
        obs_ns = start_ns + t * period
        writer.write(T.camera_image_topic(camera), obs_ns + 1_000_000, T.image_msg(obs_ns, frame, camera))
        applied_ns = obs_ns + 5_000_000
        writer.write(T.APPLIED_ACTION, applied_ns, T.applied_action_msg(applied_ns, action.astype(np.float64)))
    end_ns = start_ns + len(episode.frames) * period
    if episode.success is not None:
        writer.write(T.SUCCESS, end_ns, T.bool_msg(episode.success))
        writer.set_label(episode.success)
    return writer.close(end_ns)


def toy_task_episode(length: int, seed: int, success: bool, image_size: int = 64) -> EpisodeFrames:
    """A moving-square episode labelled ``success``; successful ones show a yellow goal bar in their last quarter."""
    ep = moving_square_episode(length, seed, image_size, success=success)
    if success:
        bar = max(image_size // 8, 2)
        ep.frames[int(0.75 * length) :, -bar:, :] = (240, 220, 40)
    ep.episode_id = f"{'ok' if success else 'fail'}-{seed:04d}"
    return ep
