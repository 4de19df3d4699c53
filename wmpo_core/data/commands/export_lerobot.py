"""`wmpo export-lerobot`: write episode bags as a LeRobotDataset (v3.0)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.data.bag import EpisodeError

HELP = (
    "write episode bags as a LeRobotDataset v3.0 (parquet + meta/*.json; frames as lossless PNG image features "
    "or, with --video, mp4 video features; "
    "actions, observation.state, next.success; episode labels kept in wmpo/* columns). --out must not exist."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo export-lerobot`."""
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of episode bags")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    parser.add_argument("--camera", action="append", help="camera to export (repeat; default: every camera)")
    parser.add_argument("--robot-type", help="info.json robot_type (default: the episodes' robot_id)")
    parser.add_argument("--video", nargs="?", const="libsvtav1", metavar="CODEC",
                        help="store frames as mp4 video (lossy; LeRobot's default encoder libsvtav1, or another "
                             "ffmpeg encoder such as libx264) instead of lossless PNG images")


def main(args: argparse.Namespace) -> int:
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
