"""Episodes <-> LeRobotDataset (format v3.0), written and read through the published layout.

The ``lerobot`` package cannot be installed beside this stack (lerobot 0.4.4 requires
torch<2.11 and torchvision; the stack pins torch 2.13.0 CPU), so the layout is written
with pyarrow, as LeRobot's ``datasets/utils.py`` defines it::

    meta/info.json                                 codebase_version "v3.0", fps, features, paths
    meta/stats.json                                per-feature min / max / mean / std / count
    meta/tasks.parquet                             task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet       one row per episode: length, data file, index range
    data/chunk-000/file-000.parquet                one row per frame

Frames go in as ``image`` features (PNG bytes in the parquet, the Hugging Face ``Image``
struct), so images survive the round trip bit for bit. Features written: every camera as
``observation.images.<camera>``, ``observation.state`` (joint positions, when the bag has
them), ``action`` (the 7 names of docs/interfaces.md), ``next.success`` (per-frame success:
the recorded check when there is one, else true on the last frame of a success) and the
LeRobot defaults (timestamp, frame_index, episode_index, index, task_index). The task
string is the instruction. Per-episode ``wmpo/*`` columns in the episodes table keep the
episode metadata and the success label (true / false / unknown), which LeRobot ignores.

Import reads ``image`` features (and ``video`` features through imageio) of a v3.0 dataset
whose ``action`` has 7 values and writes one bag per episode with the project's writer.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmpo_core.control import ACTION_NAMES
from wmpo_core.data import topics as T

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
IMAGE_PREFIX = "observation.images."
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
START_NS = 1_700_000_000_000_000_000


class LeRobotError(ValueError):
    """A dataset that cannot be written or read; the message names the file and the field."""


def _pa() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LeRobotError("LeRobot datasets need pyarrow: pip install 'wmpo[lerobot]'") from None
    return pa, pq


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _unpng(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises many types for bad bytes
        raise LeRobotError(f"{where}: image bytes do not decode ({type(exc).__name__}: {exc})") from None


def _stats(values: np.ndarray) -> dict[str, list[Any]]:
    v = np.asarray(values, dtype=np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [int(len(v))]}


def _image_stats(frames: np.ndarray) -> dict[str, list[Any]]:
    # LeRobot keeps image statistics per channel, shaped (3, 1, 1), on [0, 1] values.
    v = frames.reshape(-1, 3).astype(np.float64) / 255.0
    shape = lambda x: [[[float(c)]] for c in x]  # noqa: E731
    return {"min": shape(v.min(0)), "max": shape(v.max(0)), "mean": shape(v.mean(0)), "std": shape(v.std(0)),
            "count": [int(len(frames))]}


def _pandas_index_metadata(index: str, columns: list[tuple[str, str, str]]) -> bytes:
    """The b'pandas' schema metadata pandas writes, so ``pd.read_parquet`` restores ``index`` as the index."""
    cols = [{"name": n, "field_name": n, "pandas_type": pt, "numpy_type": nt, "metadata": None} for n, pt, nt in columns]
    return json.dumps({"index_columns": [index], "column_indexes": [{"name": None, "field_name": None,
                       "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
                       "columns": cols, "creator": {"library": "pyarrow", "version": _pa()[0].__version__},
                       "pandas_version": "2.2.3"}).encode()


def _hf_features(features: dict[str, dict[str, Any]]) -> bytes:
    """The b'huggingface' schema metadata of the Hugging Face ``datasets`` features LeRobot derives from info.json."""
    out: dict[str, Any] = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif list(ft["shape"]) == [1]:
            out[key] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            out[key] = {"feature": {"dtype": ft["dtype"], "_type": "Value"}, "length": int(ft["shape"][0]),
                        "_type": "Sequence"}
    return json.dumps({"info": {"features": out}}).encode()


@dataclass
class ExportReport:
    """What an export wrote."""

    root: Path
    episodes: int
    frames: int
    cameras: tuple[str, ...]


def export_lerobot(episodes_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   cameras: list[str] | None = None, robot_type: str | None = None,
                   video_codec: str | None = None) -> ExportReport:
    """Write every readable episode of ``episodes_dir`` as a LeRobotDataset v3.0 at ``out`` (must not exist).

    Frames are lossless PNG ``image`` features; with ``video_codec`` (an ffmpeg encoder, LeRobot's
    default is ``libsvtav1``) each camera becomes one mp4 of all episodes (``video`` features, lossy).
    """
    from wmpo_core.data.bag import episode_dirs, load_episode

    pa, pq = _pa()
    root = Path(out)
    if root.exists():
        raise LeRobotError(f"{root}: exists already; a dataset is never overwritten (choose another --out)")
    bags = episode_dirs(episodes_dir)
    if not bags:
        raise LeRobotError(f"{episodes_dir}: no episode bags")
    loaded = [load_episode(b, cameras=cameras) for b in bags]
    cams = tuple(cameras or sorted(loaded[0].frames))
    hz = {float(e.metadata.control_hz) for e in loaded}
    if len(hz) != 1:
        raise LeRobotError(f"{episodes_dir}: episodes recorded at different control rates {sorted(hz)}; export them "
                           "separately (a LeRobotDataset has one fps)")
    fps = hz.pop()
    shapes = {c: {e.frames[c].shape[1:] for e in loaded if e.num_steps} for c in cams}
    for c, s in shapes.items():
        if len(s) != 1:
            raise LeRobotError(f"{episodes_dir}: camera {c} has frames of different sizes {sorted(s)}")
    joint_sets = {e.joint_names for e in loaded}
    joint_names = joint_sets.pop() if len(joint_sets) == 1 else ()
    tasks: dict[str, int] = {}
    features: dict[str, dict[str, Any]] = {}
    for c in cams:
        shape = list(next(iter(shapes[c])))
        features[IMAGE_PREFIX + c] = {"dtype": "video" if video_codec else "image", "shape": shape,
                                      "names": ["height", "width", "channels"]}
        if video_codec:
            features[IMAGE_PREFIX + c]["info"] = {
                "video.height": shape[0], "video.width": shape[1], "video.codec": video_codec.removeprefix("lib"),
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                "has_audio": False}
    if joint_names:
        features["observation.state"] = {"dtype": "float32", "shape": [len(joint_names)], "names": list(joint_names)}
    features["action"] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    for name, dtype in zip(DEFAULT_FEATURES, ("float32", "int64", "int64", "int64", "int64"), strict=True):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}

    columns: dict[str, list[Any]] = {k: [] for k in features}
    rows: list[dict[str, Any]] = []
    index = 0
    for ep_index, ep in enumerate(loaded):
        n = ep.num_steps
        task_index = tasks.setdefault(ep.metadata.instruction, len(tasks))
        for c in cams if not video_codec else ():
            columns[IMAGE_PREFIX + c] += [{"bytes": _png(f), "path": None} for f in ep.frames[c]]
        if joint_names:
            columns["observation.state"] += list(np.asarray(ep.proprio, dtype=np.float32))
        columns["action"] += list(np.asarray(ep.actions, dtype=np.float32))
        success = np.zeros(n, dtype=bool)
        per_frame = ep.success_flags is not None and ep.metadata.success is not False
        if per_frame:
            success[:] = np.asarray(ep.success_flags, dtype=bool)[:n]
        elif ep.metadata.success and n:
            success[-1] = True
        columns["next.success"] += success.tolist()
        columns["timestamp"] += (np.arange(n) / fps).astype(np.float32).tolist()
        columns["frame_index"] += list(range(n))
        columns["episode_index"] += [ep_index] * n
        columns["index"] += list(range(index, index + n))
        columns["task_index"] += [task_index] * n
        label = ep.metadata.success
        meta = ep.metadata.to_dict()
        for key in ("label", "recorded_success"):  # an operator's label is exported as the success itself
            meta.pop(key, None)
        rows.append({"episode_index": ep_index, "tasks": [ep.metadata.instruction], "length": n,
                     "data/chunk_index": 0, "data/file_index": 0,
                     "dataset_from_index": index, "dataset_to_index": index + n,
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                     **{f"videos/{IMAGE_PREFIX}{c}/{k}": v for c in (cams if video_codec else ()) for k, v in (
                         ("chunk_index", 0), ("file_index", 0), ("from_timestamp", index / fps),
                         ("to_timestamp", (index + n) / fps))},
                     "wmpo/episode_id": ep.metadata.episode_id, "wmpo/success": -1 if label is None else int(label),
                     "wmpo/per_frame_success": bool(per_frame), "wmpo/metadata": json.dumps(meta, sort_keys=True)})
        index += n

    arrays, fields = [], []
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            typ = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        elif list(ft["shape"]) == [1]:
            typ = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}[ft["dtype"]]
        else:
            typ = pa.list_(pa.float32(), int(ft["shape"][0]))
            columns[key] = [np.asarray(v, dtype=np.float32).tolist() for v in columns[key]]
        arrays.append(pa.array(columns[key], type=typ))
        fields.append(pa.field(key, typ))
    schema = pa.schema(fields, metadata={b"huggingface": _hf_features(features)})
    tmp = root.with_name(f".{root.name}.partial-{os.getpid()}")
    data_file = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), data_file)
    episodes_file = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_file.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes_file)
    task_names = sorted(tasks, key=tasks.get)
    task_table = pa.table({"task_index": pa.array([tasks[t] for t in task_names], pa.int64()),
                           "task": pa.array(task_names, pa.string())})
    task_table = task_table.replace_schema_metadata({b"pandas": _pandas_index_metadata(
        "task", [("task_index", "int64", "int64"), ("task", "unicode", "object")])})
    pq.write_table(task_table, tmp / TASKS_PATH)
    stats: dict[str, Any] = {"action": _stats(np.concatenate([e.actions for e in loaded]))}
    if joint_names:
        stats["observation.state"] = _stats(np.concatenate([e.proprio for e in loaded]))
    for c in cams:
        stats[IMAGE_PREFIX + c] = _image_stats(np.concatenate([e.frames[c] for e in loaded]))
    (tmp / STATS_PATH).write_text(json.dumps(stats, indent=2))
    for c in cams if video_codec else ():
        path = tmp / VIDEO_PATH.format(video_key=IMAGE_PREFIX + c, chunk_index=0, file_index=0)
        _encode_video(path, np.concatenate([e.frames[c] for e in loaded]), fps, video_codec or "")
    robot = robot_type or (loaded[0].metadata.robot_id if len({e.metadata.robot_id for e in loaded}) == 1 else None)
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot, "total_episodes": len(loaded),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": int(fps) if float(fps).is_integer() else fps, "splits": {"train": f"0:{len(loaded)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if video_codec else None, "features": features}
    (tmp / INFO_PATH).write_text(json.dumps(info, indent=4))
    os.replace(tmp, root)
    return ExportReport(root, len(loaded), index, cams)


# --------------------------------------------------------------------------- import


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json of a dataset, checked for the version and fields the importer relies on."""
    path = root / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise LeRobotError(f"{path}: missing (is {root} a LeRobotDataset?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise LeRobotError(f"{path}: unreadable ({exc})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise LeRobotError(f"{path}: codebase_version {version!r}: only v3.x datasets are read (convert older ones "
                           "with lerobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise LeRobotError(f"{path}: missing field {key!r}")
    action = info["features"].get("action")
    if action is None or list(action.get("shape", [])) != [len(ACTION_NAMES)]:
        raise LeRobotError(f"{path}: features.action {action and action.get('shape')}: the stack's actions are "
                           f"{len(ACTION_NAMES)} values {list(ACTION_NAMES)} (base-frame end-effector deltas)")
    return info


def _read_tables(root: Path, pattern: str) -> Any:
    pa, pq = _pa()
    files = sorted(root.glob(pattern))
    if not files:
        raise LeRobotError(f"{root}: no {pattern} files")
    return pa.concat_tables([pq.read_table(f) for f in files]), files


def import_lerobot(dataset: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    """Write every episode of a LeRobotDataset v3 as an episode bag in ``out``; returns the bag directories."""
    from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

    root = Path(dataset)
    info = read_info(root)
    fps = float(info["fps"])
    features: dict[str, dict[str, Any]] = info["features"]
    cams = {k[len(IMAGE_PREFIX):]: ft for k, ft in features.items() if k.startswith(IMAGE_PREFIX)}
    if not cams:
        raise LeRobotError(f"{root / INFO_PATH}: features has no {IMAGE_PREFIX}<camera> entry")
    data, data_files = _read_tables(root, "data/chunk-*/file-*.parquet")
    episodes, _ = _read_tables(root, "meta/episodes/chunk-*/file-*.parquet")
    tasks = {}
    if (root / TASKS_PATH).exists():
        _, pq = _pa()
        t = pq.read_table(root / TASKS_PATH).to_pydict()
        name_col = "task" if "task" in t else next((k for k in t if k != "task_index"), None)
        if name_col is not None:
            tasks = dict(zip(t["task_index"], t[name_col], strict=True))
    cols = data.column_names
    for key in ("action", "episode_index", "frame_index"):
        if key not in cols:
            raise LeRobotError(f"{data_files[0]}: no column {key!r}")
    ep_col = np.asarray(data.column("episode_index").to_pylist())
    frame_col = np.asarray(data.column("frame_index").to_pylist())
    written: list[Path] = []
    period = round(1e9 / fps)
    for row in episodes.to_pylist():
        e = int(row["episode_index"])
        sel = np.nonzero(ep_col == e)[0]
        sel = sel[np.argsort(frame_col[sel], kind="stable")]
        where = f"{data_files[0]} episode {e}"
        if not len(sel):
            raise LeRobotError(f"{where}: no frames")
        take = data.take(sel)
        actions = np.asarray(take.column("action").to_pylist(), dtype=np.float64)
        frames = {c: _frames(root, info, take, c, ft, row, where) for c, ft in cams.items()}
        state = (np.asarray(take.column("observation.state").to_pylist(), dtype=np.float64)
                 if "observation.state" in cols else None)
        state_names = list((features.get("observation.state") or {}).get("names") or [])
        if state is not None and len(state_names) != state.shape[1]:
            state_names = [f"state_{i}" for i in range(state.shape[1])]
        flags = (np.asarray(take.column("next.success").to_pylist(), dtype=bool).reshape(len(sel))
                 if "next.success" in cols else None)
        task_index = int(take.column("task_index")[0].as_py()) if "task_index" in cols else None
        instruction = tasks.get(task_index) or (row.get("tasks") or [""])[0]
        if "wmpo/metadata" in row and row["wmpo/metadata"]:
            meta = EpisodeMetadata.from_json(row["wmpo/metadata"], f"{where} wmpo/metadata")
            success = {-1: None, 0: False, 1: True}[int(row["wmpo/success"])]
            per_frame = bool(row.get("wmpo/per_frame_success"))
        else:
            meta = EpisodeMetadata.new(str(info.get("robot_type") or "lerobot"), instruction,
                                       episode_id=f"{root.name}_{e:06d}".replace(" ", "-"),
                                       robot_id=str(info.get("robot_type") or "lerobot"), control_hz=fps)
            success = None if flags is None else bool(flags.any())
            per_frame = flags is not None
        meta.policy_version = meta.policy_version or "lerobot"
        meta.extra["imported_from"] = str(root.resolve())
        writer = EpisodeWriter(out, meta, start_ns=START_NS - 1, flush_interval_s=None)
        try:
            writer.write(T.INSTRUCTION, START_NS - 1, T.string_msg(meta.instruction))
            for t in range(len(sel)):
                obs = START_NS + t * period
                for c in cams:
                    writer.write(T.camera_image_topic(c), obs + 1_000_000, T.image_msg(obs, frames[c][t], c))
                if state is not None:
                    writer.write(T.JOINT_STATES, obs + 1_000_000, T.joint_state_msg(obs, state_names, state[t]))
                if per_frame and flags is not None:
                    writer.write(T.SUCCESS, obs + 2_000_000, T.bool_msg(bool(flags[t])))
                writer.write(T.APPLIED_ACTION, obs + 5_000_000, T.applied_action_msg(obs + 5_000_000, actions[t]))
            if success is not None:
                writer.set_label(success)
            written.append(writer.close(START_NS + len(sel) * period))
        except BaseException:
            writer.abort()
            shutil.rmtree(writer.path, ignore_errors=True)  # made by this writer just now: no half episode is left
            raise
    return written


def _frames(root: Path, info: dict[str, Any], take: Any, cam: str, ft: dict[str, Any], row: dict[str, Any],
            where: str) -> np.ndarray:
    key = IMAGE_PREFIX + cam
    if ft.get("dtype") == "image":
        if key not in take.column_names:
            raise LeRobotError(f"{where}: no column {key!r}")
        cells = take.column(key).to_pylist()
        return np.stack([_unpng(c["bytes"] if isinstance(c, dict) else c, f"{where} {key} frame {i}")
                         for i, c in enumerate(cells)])
    if ft.get("dtype") == "video":
        chunk, file = row.get(f"videos/{key}/chunk_index", 0), row.get(f"videos/{key}/file_index", 0)
        path = root / str(info.get("video_path") or VIDEO_PATH).format(video_key=key, chunk_index=chunk, file_index=file)
        start = float(row.get(f"videos/{key}/from_timestamp", 0.0))
        first = round(start * float(info["fps"]))
        video = _decode_video(path)
        if first + take.num_rows > len(video):
            raise LeRobotError(f"{path}: {len(video)} frames, episode {row['episode_index']} needs frames "
                               f"{first}..{first + take.num_rows - 1} (videos/{key}/from_timestamp {start})")
        return np.ascontiguousarray(video[first:first + take.num_rows, ..., :3])
    raise LeRobotError(f"{root / INFO_PATH}: features.{key}.dtype {ft.get('dtype')!r}: expected image or video")


def _encode_video(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    """One mp4 of ``frames`` with ffmpeg (imageio-ffmpeg's bundled binary), LeRobot's settings: yuv420p,
    a keyframe every 2 frames, crf 30."""
    import imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = imageio.get_writer(path, fps=fps, codec=codec, quality=None, pixelformat="yuv420p",
                                    macro_block_size=1, ffmpeg_params=["-g", "2", "-crf", "30"],
                                    ffmpeg_log_level="error")
        with writer:
            for frame in frames:
                writer.append_data(frame)
    except Exception as exc:  # unknown encoder, odd frame size for yuv420p, ffmpeg failure
        text = str(exc).strip().splitlines()
        raise LeRobotError(f"{path}: video encoding with {codec!r} failed ({type(exc).__name__}: "
                           f"{text[-1] if text else ''})") from None


_VIDEO_CACHE: dict[Path, np.ndarray] = {}


def _decode_video(path: Path) -> np.ndarray:
    """Every frame of an mp4 (the last file decoded is kept: the episodes of a v3 file share it)."""
    if path not in _VIDEO_CACHE:
        import imageio.v3 as iio

        try:
            video = iio.imread(path)
        except Exception as exc:  # missing file, unknown codec
            raise LeRobotError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None
        _VIDEO_CACHE.clear()
        _VIDEO_CACHE[path] = np.asarray(video)
    return _VIDEO_CACHE[path]
