"""Load a LeRobotDataset v3 the way lerobot's loader does, with Hugging Face `datasets` and pandas only.

`lerobot` itself cannot be imported beside this stack's CPU torch (its dataset module imports
torchvision, whose only PyPI build for torch 2.13 is a CUDA one: docs/real_robot.md), so this script
repeats its loading steps (lerobot src/lerobot/datasets/utils.py: load_info, load_tasks,
load_episodes, load_nested_dataset with the features derived from info.json, then __getitem__'s
task lookup) with the libraries lerobot uses, in the separate environment that
scripts/make_lerobot_check_env.sh builds:

    "$(bash scripts/make_lerobot_check_env.sh)" scripts/check_lerobot_dataset.py datasets/demos

Prints one line per episode and exits non-zero on the first inconsistency. With `--json FILE` it
also writes what it loaded (episode ranges, task strings, every action, a digest of every decoded
image, the library versions) for a test to compare with the source episodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd


def hf_features(features: dict) -> datasets.Features:
    """lerobot's get_hf_features_from_features (videos are decoded separately, so they are left out)."""
    out = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            out[key] = datasets.Image()
        elif tuple(ft["shape"]) == (1,):
            out[key] = datasets.Value(dtype=ft["dtype"])
        elif len(ft["shape"]) == 1:
            out[key] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(dtype=ft["dtype"]))
        else:
            raise SystemExit(f"{key}: shape {ft['shape']} is not handled here")
    return datasets.Features(out)


def main(root: Path, json_out: Path | None = None) -> int:
    info = json.loads((root / "meta/info.json").read_text())
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    episodes = datasets.Dataset.from_parquet([str(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet"))])
    data = datasets.Dataset.from_parquet([str(p) for p in sorted((root / "data").glob("*/*.parquet"))],
                                         features=hf_features(info["features"]))
    assert len(data) == info["total_frames"], (len(data), info["total_frames"])
    assert len(episodes) == info["total_episodes"], (len(episodes), info["total_episodes"])
    assert len(tasks) == info["total_tasks"] and list(tasks.columns) == ["task_index"], tasks
    image_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "image"]
    loaded = {"versions": {"datasets": datasets.__version__, "pandas": pd.__version__, "numpy": np.__version__},
              "frames": len(data), "episodes": [], "action": [], "images": {k: [] for k in image_keys}}
    for ep in episodes:
        lo, hi = ep["dataset_from_index"], ep["dataset_to_index"]
        first, last = data[lo], data[hi - 1]
        assert first["episode_index"] == ep["episode_index"] == last["episode_index"]
        assert first["frame_index"] == 0 and last["frame_index"] == ep["length"] - 1
        task = tasks.iloc[first["task_index"]].name  # what LeRobotDataset.__getitem__ puts in item["task"]
        assert task in ep["tasks"], (task, ep["tasks"])
        shapes = {k: np.asarray(first[k]).shape for k, ft in info["features"].items() if ft["dtype"] == "image"}
        for k, shape in shapes.items():
            assert list(shape) == info["features"][k]["shape"], (k, shape)
        print(f"episode {ep['episode_index']}: {ep['length']} frames, task {task!r}, images {shapes}, "
              f"action {np.asarray(first['action']).shape}")
        loaded["episodes"].append({"episode_index": ep["episode_index"], "from": lo, "to": hi, "task": task})
    for row in data:  # every frame, decoded by `datasets` as LeRobot's loader gets it
        loaded["action"].append([float(v) for v in row["action"]])
        for k in image_keys:
            pixels = np.asarray(row[k])
            loaded["images"][k].append([list(pixels.shape), hashlib.sha256(pixels.tobytes()).hexdigest()])
    if json_out is not None:
        json_out.write_text(json.dumps(loaded))
    print(f"ok: {len(episodes)} episodes, {len(data)} frames, datasets {datasets.__version__}, pandas {pd.__version__}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the dataset folder (meta/, data/)")
    parser.add_argument("--json", type=Path, help="also write what was loaded to this file")
    args = parser.parse_args()
    raise SystemExit(main(args.root, args.json))
