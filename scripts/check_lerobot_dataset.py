"""Load a LeRobotDataset v3 the way lerobot's loader does, with Hugging Face `datasets` and pandas only.

`lerobot` itself needs torch<2.11 and cannot live beside this stack, so this script repeats its
loading steps (lerobot src/lerobot/datasets/utils.py: load_info, load_tasks, load_episodes,
load_nested_dataset with the features derived from info.json, then __getitem__'s task lookup)
in any environment with `datasets` and `pandas` (a throwaway venv):

    python -m venv /tmp/dsvenv && /tmp/dsvenv/bin/pip install "datasets>=4,<5" pillow
    /tmp/dsvenv/bin/python scripts/check_lerobot_dataset.py datasets/demos

Prints one line per episode and exits non-zero on the first inconsistency.
"""

from __future__ import annotations

import json
import sys
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


def main(root: Path) -> int:
    info = json.loads((root / "meta/info.json").read_text())
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    episodes = datasets.Dataset.from_parquet([str(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet"))])
    data = datasets.Dataset.from_parquet([str(p) for p in sorted((root / "data").glob("*/*.parquet"))],
                                         features=hf_features(info["features"]))
    assert len(data) == info["total_frames"], (len(data), info["total_frames"])
    assert len(episodes) == info["total_episodes"], (len(episodes), info["total_episodes"])
    assert len(tasks) == info["total_tasks"] and list(tasks.columns) == ["task_index"], tasks
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
    print(f"ok: {len(episodes)} episodes, {len(data)} frames, datasets {datasets.__version__}, pandas {pd.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
