"""`wmpo export-lerobot DIR --out DS` and `wmpo import-lerobot DS --out DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.data.bag import EpisodeError

HELP_export_lerobot = (
    "write episode bags as a LeRobotDataset v3.0 (parquet + meta/*.json; frames as lossless PNG image features "
    "or, with --video, mp4 video features; "
    "actions, observation.state, next.success; episode labels kept in wmpo/* columns). --out must not exist."
)
HELP_import_lerobot = (
    "write the episodes of a LeRobotDataset v3.x (image or video features, a 7-value action) as episode bags "
    "that every command reads. An existing non-empty --out is refused unless --into-existing."
)


def configure_export_lerobot(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo export-lerobot`."""
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of episode bags")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    parser.add_argument("--camera", action="append", help="camera to export (repeat; default: every camera)")
    parser.add_argument("--robot-type", help="info.json robot_type (default: the episodes' robot_id)")
    parser.add_argument("--video", nargs="?", const="libsvtav1", metavar="CODEC",
                        help="store frames as mp4 video (lossy; LeRobot's default encoder libsvtav1, or another "
                             "ffmpeg encoder such as libx264) instead of lossless PNG images")


def main_export_lerobot(args: argparse.Namespace) -> int:
    """Run `wmpo export-lerobot`."""
    from wmpo_core.data.lerobot import LeRobotError, export_lerobot

    try:
        report = export_lerobot(args.dir, args.out, cameras=args.camera, robot_type=args.robot_type,
                                video_codec=args.video)
    except (LeRobotError, EpisodeError) as exc:
        print(f"wmpo export-lerobot: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report.episodes} episode(s), {report.frames} frames, cameras {', '.join(report.cameras)} "
          f"to {report.root}")
    return 0


def configure_import_lerobot(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo import-lerobot`."""
    parser.add_argument("dataset", type=Path, metavar="DS", help="LeRobotDataset folder (the one holding meta/)")
    parser.add_argument("--out", required=True, type=Path, help="episodes folder to write")
    parser.add_argument("--into-existing", action="store_true", help="add to an --out that already holds episodes")


def main_import_lerobot(args: argparse.Namespace) -> int:
    """Run `wmpo import-lerobot`."""
    from wmpo_core.data.lerobot import LeRobotError, import_lerobot

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.into_existing:
        print(f"wmpo import-lerobot: {out} exists and is not empty; pass --into-existing to add to it",
              file=sys.stderr)
        return 2
    try:
        written = import_lerobot(args.dataset, out)
    except (LeRobotError, EpisodeError, ValueError) as exc:
        print(f"wmpo import-lerobot: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(written)} episode(s) into {out}")
    return 0


HELP = HELP_export_lerobot
configure = configure_export_lerobot
main = main_export_lerobot
