"""Load an exported dataset with the `lerobot` package's own LeRobotDataset and index every frame.

Runs in the opt-in environment that `scripts/make_lerobot_check_env.sh --full` builds (lerobot 0.4.4
with a torch and torchvision it can import; several GB), offline:

    HF_HUB_OFFLINE=1 "$(bash scripts/make_lerobot_check_env.sh --full)" scripts/load_with_lerobot.py datasets/demos

Prints one line per episode. With `--out FILE.npz` it also saves what `LeRobotDataset.__getitem__`
returned for every frame: each image feature as lerobot decoded it (float32, channels first, in
[0, 1]), `action`, `episode_index`, `frame_index`, `index` and the `task` string; the action chunk
that a second LeRobotDataset with `delta_timestamps` (one step back, three ahead, as a policy trained
on chunks asks for) returns with its `action_is_pad` flags, which lerobot takes from the episode
table's `dataset_from_index`/`dataset_to_index`; the dataset's episode count and the library versions.
A numpy archive of plain arrays (no pickle), for a test to compare with the source episodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lerobot
import numpy as np
import torch
import torchvision
from lerobot.datasets.lerobot_dataset import LeRobotDataset

CHUNK_STEPS = (-1, 0, 1, 2)


def main(root: Path, repo_id: str, out: Path | None) -> int:
    ds = LeRobotDataset(repo_id, root=root)
    chunked = LeRobotDataset(repo_id, root=root, delta_timestamps={"action": [k / ds.fps for k in CHUNK_STEPS]})
    image_keys = list(ds.meta.camera_keys)
    keys = [*image_keys, "action", "episode_index", "frame_index", "index", "task"]
    columns: dict[str, list] = {k: [] for k in [*keys, "action_chunk", "action_chunk_is_pad"]}
    for i in range(len(ds)):
        item = ds[i]
        for k in keys:
            value = item[k]
            columns[k].append(value if isinstance(value, str) else value.numpy())
        item = chunked[i]
        columns["action_chunk"].append(item["action"].numpy())
        columns["action_chunk_is_pad"].append(item["action_is_pad"].numpy())
    episode = np.asarray(columns["episode_index"])
    for ep in np.unique(episode):
        rows = np.flatnonzero(episode == ep)
        print(f"episode {ep}: frames {rows[0]}..{rows[-1]}, task {columns['task'][rows[0]]!r}")
    versions = {"lerobot": lerobot.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "numpy": np.__version__}
    if out is not None:
        arrays = {k: np.stack(v) if k != "task" else np.asarray(v, dtype=str) for k, v in columns.items()}
        np.savez(out, **arrays, num_episodes=np.asarray(ds.num_episodes), num_frames=np.asarray(ds.num_frames),
                 image_keys=np.asarray(image_keys, dtype=str), chunk_steps=np.asarray(CHUNK_STEPS),
                 versions=np.asarray(json.dumps(versions)))
    print(f"ok: {ds.num_episodes} episodes, {len(ds)} frames, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the dataset folder (meta/, data/)")
    parser.add_argument("--repo-id", default="local/export", help="the repo_id LeRobotDataset is given (not fetched)")
    parser.add_argument("--out", type=Path, help="also save what was loaded to this .npz file")
    args = parser.parse_args()
    raise SystemExit(main(args.root, args.repo_id, args.out))
