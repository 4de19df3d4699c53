"""Listing the episode bags of a folder (read-only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.data import topics as T
from wmpo_core.data.bag import BagSummary, EpisodeError, episode_dirs, inspect_episode
from wmpo_core.data.labels import label_path

STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"
STATUS_NEEDS_REPAIR = "needs-repair"
STATUS_RECORDING = "recording"


@dataclass
class EpisodeInfo:
    """One listed episode.

    ``status`` is ``complete`` (finished normally), ``incomplete`` (repaired after a
    crash: a valid bag marked ``complete: false``), ``needs-repair`` (the writer was
    killed or the file is truncated) or ``recording`` (a live writer holds it). For the
    last two, counts come from the chunks written so far.
    """

    path: Path
    episode_id: str
    task: str
    steps: int
    duration_s: float
    success: bool | None
    policy_version: str
    complete: bool
    status: str
    # success comes from an operator's label (wmpo label), not from the recording
    labelled: bool = False
    seed: int | None = None  # the start state's seed (metadata; None when unknown)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "path": str(self.path),
            "episode_id": self.episode_id,
            "task": self.task,
            "steps": self.steps,
            "duration_s": round(self.duration_s, 3),
            "success": self.success,
            "policy_version": self.policy_version,
            "complete": self.complete,
            "status": self.status,
            "labelled": self.labelled,
        }


def episode_info(path: str | os.PathLike[str]) -> EpisodeInfo:
    """Summary of one bag directory; raises EpisodeError naming the file when it is unreadable. Reads only."""
    d = Path(path)
    status, md, counts = inspect_episode(d)
    if isinstance(counts, BagSummary):
        return EpisodeInfo(
            path=d,
            episode_id=md.episode_id,
            task=md.task,
            steps=counts.topic_counts.get(T.APPLIED_ACTION, 0),
            duration_s=counts.duration_ns / 1e9,
            success=md.success,
            policy_version=md.policy_version,
            complete=md.complete,
            status=STATUS_COMPLETE if md.complete else STATUS_INCOMPLETE,
            labelled=label_path(d).exists(),
        seed=md.seed,
        )
    return EpisodeInfo(
        path=d,
        episode_id=md.episode_id,
        task=md.task,
        steps=counts.per_topic.get(T.APPLIED_ACTION, 0),
        duration_s=((counts.end_ns or 0) - (counts.start_ns or 0)) / 1e9,
        success=md.success,
        policy_version=md.policy_version,
        complete=False,
        status=status,
        labelled=label_path(d).exists(),
        seed=md.seed,
    )


def list_episodes(folder: str | os.PathLike[str]) -> list[EpisodeInfo | EpisodeError]:
    """Every episode bag in ``folder`` (sorted by directory name); unreadable bags become EpisodeError entries.

    A stray ``*.mcap`` file directly in the folder is reported as an error entry too.
    Raises EpisodeError only when ``folder`` itself is not a directory. Never modifies anything.
    """
    f = Path(folder)
    entries: list[tuple[str, EpisodeInfo | EpisodeError]] = []
    for d in episode_dirs(f):
        try:
            entries.append((d.name, episode_info(d)))
        except EpisodeError as exc:
            entries.append((d.name, exc))
        except OSError as exc:
            entries.append((d.name, EpisodeError(d, f"unreadable: {exc.strerror or exc}")))
    for stray in sorted(f.glob("*.mcap")):
        if stray.is_file():
            entries.append((stray.name, EpisodeError(
                stray, "MCAP file outside an episode directory (expected <folder>/<episode_id>/ with metadata.yaml)")))
    return [e for _, e in sorted(entries, key=lambda kv: kv[0])]


def write_synthetic_episode(
    out_dir: str | os.PathLike[str],
    steps: int,
    *,
    episode_id: str | None = None,
    cameras: tuple[str, ...] = T.SIM_CAMERAS,
    image_size: tuple[int, int] = (64, 64),
    control_hz: float = 20.0,
    chunk_len: int = 8,
    success: bool | None = True,
    start_ns: int = 1_700_000_000_000_000_000,
    **writer_kwargs: Any,
) -> Path:
    """Write a small, fully specified episode (test fixtures, benchmarks, smoke checks).

    Step t (observation stamp ``start_ns + t / control_hz``): every camera image is filled
    with ``t % 256`` (red channel) and the camera index (green), joint positions are
    ``[t, -t, 0.5 t]``, a chunk of ``chunk_len`` actions ``chunk[k] = t + k`` is published every
    ``chunk_len`` steps, and the applied action ``[t] * 7`` follows 5 ms after the observation.
    """
    import numpy as np

    from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

    period = round(1e9 / control_hz)
    metadata = EpisodeMetadata.new("lift", "lift the red cube", episode_id=episode_id, seed=0,
                                   policy_version="synthetic", control_hz=control_hz)
    h, w = image_size
    writer = EpisodeWriter(out_dir, metadata, start_ns=start_ns - 1, **writer_kwargs)
    writer.write(T.INSTRUCTION, start_ns - 1, T.string_msg(metadata.instruction))
    writer.write(T.POLICY_VERSION, start_ns - 1, T.string_msg(metadata.policy_version))
    for cam in cameras:
        writer.write(T.camera_info_topic(cam), start_ns, T.camera_info_msg(start_ns, w, h, 50.0, 50.0, cam))
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for t in range(steps):
        obs_ns = start_ns + t * period
        for c, cam in enumerate(cameras):
            image[..., 0] = t % 256
            image[..., 1] = c
            writer.write(T.camera_image_topic(cam), obs_ns + 1_000_000, T.image_msg(obs_ns, image, cam))
        writer.write(T.JOINT_STATES, obs_ns + 1_000_000,
                     T.joint_state_msg(obs_ns, ["j1", "j2", "j3"], [t, -t, 0.5 * t]))
        if t % chunk_len == 0:
            chunk = (t + np.arange(chunk_len, dtype=np.float64))[:, None].repeat(7, axis=1)
            writer.write(T.ACTION_CHUNK, obs_ns + 3_000_000, T.action_chunk_msg(obs_ns, chunk, control_hz))
        applied_ns = obs_ns + 5_000_000
        writer.write(T.APPLIED_ACTION, applied_ns, T.applied_action_msg(applied_ns, np.full(7, float(t))))
    if success is not None:
        writer.write(T.SUCCESS, start_ns + steps * period, T.bool_msg(success))
        writer.set_label(success)
    return writer.close(start_ns + steps * period)
