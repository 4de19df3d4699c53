"""Episodes -> LeRobotDataset v3.0 -> episodes: images bit-exact, actions within 1e-6, success labels kept.

The `lerobot` package cannot be imported beside the pinned CPU torch (its dataset module imports torchvision,
whose only PyPI build for torch 2.13 is a CUDA one; docs/real_robot.md), so the dataset is checked here
against the published v3.0 layout by reading it back with pyarrow and PIL; in a separate environment
(scripts/make_lerobot_check_env.sh) with the `datasets`/pandas versions lerobot uses, through
scripts/check_lerobot_dataset.py, which repeats lerobot's loading steps; and, where the opt-in environment of
`scripts/make_lerobot_check_env.sh --full` exists (lerobot 0.4.4 with a CUDA torch, several GB), with lerobot's
own LeRobotDataset through scripts/load_with_lerobot.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_dataset_episodes import write_episode_bag

from wmpo_core.data.bag import load_episode
from wmpo_core.data.episodes import write_synthetic_episode
from wmpo_core.data.lerobot import IMAGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
CHECK_ENV = Path(os.environ.get("WMPO_LEROBOT_CHECK_ENV")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wmpo/lerobot-check-env")
FULL_ENV = Path(os.environ.get("WMPO_LEROBOT_FULL_ENV")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wmpo/lerobot-full-env")


def wmpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmpo_core.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def episodes(tmp_path):
    root = tmp_path / "episodes"
    rng = np.random.default_rng(0)
    for i, success in enumerate((True, False, None)):
        n = 6 + 2 * i
        frames = {"agentview": rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8),
                  "wrist": rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)}
        actions = rng.normal(0, 0.02, (n, 7))
        actions[:, 6] = np.sign(rng.normal(size=n))
        write_episode_bag(root, f"ep_{i}", frames, actions, rng.normal(size=(n, 9)), success=success,
                          instruction=f"task {i % 2}")
    return root


def test_round_trip_keeps_images_actions_and_labels(episodes, tmp_path):
    # An operator's label is what gets exported.
    assert wmpo("label", str(episodes), "--episode", "ep_2", "--success", "yes").returncode == 0
    ds = tmp_path / "ds"
    res = wmpo("export-lerobot", str(episodes), "--out", str(ds))
    assert res.returncode == 0, res.stderr
    assert "3 episode(s), 24 frames" in res.stdout

    # The published v3.0 layout, read back with pyarrow.
    info = json.loads((ds / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["total_episodes"] == 3
    assert info["total_frames"] == 24 and info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    data = pq.read_table(ds / info["data_path"].format(chunk_index=0, file_index=0))
    assert set(data.column_names) == set(info["features"])
    assert info["features"]["action"]["names"][0] == "ee_dx"
    assert info["features"][IMAGE_PREFIX + "wrist"] == {"dtype": "image", "shape": [24, 32, 3],
                                                         "names": ["height", "width", "channels"]}
    assert data.column("index").to_pylist() == list(range(24))
    eps = pq.read_table(ds / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["length"]) for e in eps] == [(0, 6, 6), (6, 14, 8),
                                                                                            (14, 24, 10)]
    assert [e["wmpo/success"] for e in eps] == [1, 0, 1]
    tasks = pq.read_table(ds / "meta/tasks.parquet")
    assert tasks.to_pandas().loc["task 1", "task_index"] == 1 if _has_pandas() else tasks.num_rows == 2
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((ds / "meta/stats.json").read_text())
    assert len(stats["action"]["mean"]) == 7 and np.array(stats[IMAGE_PREFIX + "agentview"]["mean"]).shape == (3, 1, 1)
    first = load_episode(episodes / "ep_0")
    png = data.column(IMAGE_PREFIX + "agentview")[3].as_py()["bytes"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), first.frames["agentview"][3])
    success = data.column("next.success").to_pylist()
    assert success[:6] == [False] * 5 + [True] and not any(success[6:14]) and success[23]

    back = tmp_path / "back"
    res = wmpo("import-lerobot", str(ds), "--out", str(back))
    assert res.returncode == 0, res.stderr
    for i in range(3):
        a, b = load_episode(episodes / f"ep_{i}"), load_episode(back / f"ep_{i}")
        for cam in ("agentview", "wrist"):
            assert np.array_equal(a.frames[cam], b.frames[cam])  # lossless: bit-exact
        assert np.abs(a.actions - b.actions).max() <= 1e-6
        assert np.abs(a.proprio - b.proprio).max() <= 1e-6
        assert b.metadata.success == (True, False, True)[i] and b.metadata.instruction == f"task {i % 2}"

    # Nothing the user made is overwritten.
    assert wmpo("export-lerobot", str(episodes), "--out", str(ds)).returncode == 2
    res = wmpo("import-lerobot", str(ds), "--out", str(back))
    assert res.returncode == 2 and "--into-existing" in res.stderr


def check_in_separate_env(ds: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    """scripts/check_lerobot_dataset.py on `ds` in the separate environment, offline: returns what it loaded."""
    python = CHECK_ENV / "bin/python"
    if not python.exists():
        pytest.skip(f"no separate environment at {CHECK_ENV}: build it with scripts/make_lerobot_check_env.sh "
                    "(scripts/test.sh does)")
    out = tmp_path / "loaded.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([str(python), str(ROOT / "scripts/check_lerobot_dataset.py"), str(ds), "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    return res, (json.loads(out.read_text()) if res.returncode == 0 else None)


def test_export_loads_with_lerobots_libraries_in_a_separate_env(episodes, tmp_path):
    ds = tmp_path / "ds"
    assert wmpo("export-lerobot", str(episodes), "--out", str(ds)).returncode == 0
    res, loaded = check_in_separate_env(ds, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # The separate environment's own libraries (numpy 2, not this stack's 1.26), as `pip install lerobot` has them.
    assert loaded["versions"] == {"datasets": "4.8.5", "pandas": "3.1.1", "numpy": "2.4.6"}
    assert loaded["frames"] == 24
    assert [(e["episode_index"], e["from"], e["to"], e["task"]) for e in loaded["episodes"]] == [
        (0, 0, 6, "task 0"), (1, 6, 14, "task 1"), (2, 14, 24, "task 0")]
    source = [load_episode(episodes / f"ep_{i}") for i in range(3)]
    actions = np.concatenate([e.actions for e in source])
    assert np.abs(np.asarray(loaded["action"]) - actions).max() <= 1e-6
    for cam in ("agentview", "wrist"):
        frames = np.concatenate([e.frames[cam] for e in source])
        assert loaded["images"][IMAGE_PREFIX + cam] == [[[24, 32, 3], hashlib.sha256(f.tobytes()).hexdigest()]
                                                        for f in frames]


def load_with_lerobot(ds: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    """scripts/load_with_lerobot.py on `ds` in the opt-in lerobot environment, offline: what LeRobotDataset returned."""
    python = FULL_ENV / "bin/python"
    if not python.exists() or not list(FULL_ENV.glob(".wmpo-check-env-*")):
        pytest.skip(f"no lerobot environment at {FULL_ENV}: build it with `bash scripts/make_lerobot_check_env.sh "
                    "--full` (opt-in, not built by scripts/test.sh: about 5.9 GB, about 70 s from local wheels)")
    out = tmp_path / "lerobot.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([str(python), str(ROOT / "scripts/load_with_lerobot.py"), str(ds), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    if res.returncode != 0:
        return res, None
    with np.load(out, allow_pickle=False) as z:
        return res, {k: z[k] for k in z.files}


def test_export_loads_with_lerobots_own_loader_in_a_separate_env(episodes, tmp_path):
    ds = tmp_path / "ds"
    assert wmpo("export-lerobot", str(episodes), "--out", str(ds)).returncode == 0
    res, loaded = load_with_lerobot(ds, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(str(loaded["versions"]))["lerobot"] == "0.4.4"
    assert int(loaded["num_episodes"]) == 3 and int(loaded["num_frames"]) == 24 and len(loaded["index"]) == 24
    # Episode boundaries as LeRobotDataset.__getitem__ reports them, frame by frame.
    assert loaded["index"].tolist() == list(range(24))
    assert loaded["episode_index"].tolist() == [0] * 6 + [1] * 8 + [2] * 10
    assert loaded["frame_index"].tolist() == [*range(6), *range(8), *range(10)]
    # item["task"]: lerobot looks the string up by the row of the task table.
    assert loaded["task"].tolist() == ["task 0"] * 6 + ["task 1"] * 8 + ["task 0"] * 10
    source = [load_episode(episodes / f"ep_{i}") for i in range(3)]
    actions = np.concatenate([e.actions for e in source])
    assert np.abs(loaded["action"] - actions).max() <= 1e-6
    # Action chunks (delta_timestamps): lerobot clamps to the episode and flags the padding from the episode table.
    assert loaded["chunk_steps"].tolist() == [-1, 0, 1, 2] and loaded["action_chunk"].shape == (24, 4, 7)
    starts, ends = np.repeat([0, 6, 14], [6, 8, 10]), np.repeat([6, 14, 24], [6, 8, 10])
    want = np.arange(24)[:, None] + loaded["chunk_steps"][None, :]
    assert np.array_equal(loaded["action_chunk_is_pad"], (want < starts[:, None]) | (want >= ends[:, None]))
    clamped = np.clip(want, starts[:, None], ends[:, None] - 1)
    assert np.abs(loaded["action_chunk"] - actions[clamped]).max() <= 1e-6
    assert loaded["image_keys"].tolist() == [IMAGE_PREFIX + "agentview", IMAGE_PREFIX + "wrist"]
    for cam in ("agentview", "wrist"):
        # Lossless PNG, decoded by lerobot (torchvision's ToTensor): channels first, uint8 / 255 exactly.
        frames = np.concatenate([e.frames[cam] for e in source]).transpose(0, 3, 1, 2)
        pixels = loaded[IMAGE_PREFIX + cam]
        assert pixels.dtype == np.float32 and pixels.shape == (24, 3, 24, 32)
        assert np.array_equal(pixels, frames.astype(np.float32) / np.float32(255))


def test_a_dataset_from_elsewhere_imports_with_success_from_next_success(episodes, tmp_path):
    ds = tmp_path / "ds"
    assert wmpo("export-lerobot", str(episodes), "--out", str(ds)).returncode == 0
    # Strip this stack's own columns: what a LeRobot user would have.
    path = ds / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("wmpo/")]), path)
    back = tmp_path / "back"
    res = wmpo("import-lerobot", str(ds), "--out", str(back))
    assert res.returncode == 0, res.stderr
    listed = {e["episode_id"]: e for e in json.loads(wmpo("episodes", str(back), "--json").stdout)}
    # Without this stack's columns next.success is all there is: an unlabelled episode (ep_2) reads as a failure.
    assert [listed[f"ds_{i:06d}"]["success"] for i in range(3)] == [True, False, False]
    assert [listed[f"ds_{i:06d}"]["steps"] for i in range(3)] == [6, 8, 10]
    # Behavior cloning takes them like any recorded episodes.
    cfg = tmp_path / "policy.json"
    cfg.write_text(json.dumps(dict(num_layers=1, vision_layers=1, hidden_size=64, vision_hidden_size=64,
                                   intermediate_size=128, vision_intermediate_size=128, text_vocab_size=320)))
    res = wmpo("train-policy", "--episodes", str(back), "--out", str(tmp_path / "bc"), "--config", str(cfg),
               "--steps", "2", "--batch-size", "2", "--threads", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "bc").rglob("model.safetensors"))


def test_import_errors_name_the_file_and_field(episodes, tmp_path):
    ds = tmp_path / "ds"
    assert wmpo("export-lerobot", str(episodes), "--out", str(ds)).returncode == 0
    info_path = ds / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"]["action"]["shape"] = [14]
    info_path.write_text(json.dumps(info))
    res = wmpo("import-lerobot", str(ds), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and f"{info_path}: features.action [14]" in res.stderr
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    res = wmpo("import-lerobot", str(ds), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "codebase_version 'v2.1'" in res.stderr


def test_export_needs_one_control_rate(tmp_path):
    write_synthetic_episode(tmp_path / "eps", 5, episode_id="a", control_hz=20.0)
    write_synthetic_episode(tmp_path / "eps", 5, episode_id="b", control_hz=10.0)
    res = wmpo("export-lerobot", str(tmp_path / "eps"), "--out", str(tmp_path / "ds"))
    assert res.returncode == 2 and "different control rates [10.0, 20.0]" in res.stderr
    assert not (tmp_path / "ds").exists()


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _scene(n: int, shift: int) -> np.ndarray:
    """Smooth frames with a moving red square: what a camera sees, unlike noise, which no video codec keeps."""
    y, x = np.mgrid[0:64, 0:64]
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0], frames[t, ..., 1], frames[t, ..., 2] = (x * 3 + t * 2) % 256, y * 3, 80
        left = (t * 3 + shift) % 48
        frames[t, 20:36, left:left + 16] = (230, 40, 40)
    return frames


def test_video_round_trip_psnr(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        n = 10 + i
        write_episode_bag(tmp_path / "eps", f"ep_{i}", {"agentview": _scene(n, 5 * i)}, rng.normal(0, 0.02, (n, 7)),
                          success=bool(i % 2))
    ds = tmp_path / "ds"
    res = wmpo("export-lerobot", str(tmp_path / "eps"), "--out", str(ds), "--video")  # LeRobot's AV1 default
    assert res.returncode == 0, res.stderr
    info = json.loads((ds / "meta/info.json").read_text())
    key = IMAGE_PREFIX + "agentview"
    assert info["features"][key]["dtype"] == "video" and info["features"][key]["info"]["video.codec"] == "svtav1"
    assert (ds / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)).is_file()
    assert key not in pq.read_table(ds / "data/chunk-000/file-000.parquet").column_names
    assert wmpo("import-lerobot", str(ds), "--out", str(tmp_path / "back")).returncode == 0
    for i in range(3):
        a = load_episode(tmp_path / "eps" / f"ep_{i}")
        b = load_episode(tmp_path / "back" / f"ep_{i}")
        mse = np.mean((a.frames["agentview"].astype(float) - b.frames["agentview"].astype(float)) ** 2)
        psnr = 10 * np.log10(255**2 / mse)
        assert psnr > 30, psnr  # measured 33.4-33.9 dB (AV1, crf 30, yuv420p, 64x64)
        assert np.abs(a.actions - b.actions).max() <= 1e-6 and b.metadata.success == bool(i % 2)
