"""`wmpo import-lerobot`: episodes from a LeRobotDataset (v3.x)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.data.bag import EpisodeError

HELP = (
    "write the episodes of a LeRobotDataset v3.x (image or video features, a 7-value action) as episode bags "
    "that every command reads. An existing non-empty --out is refused unless --into-existing."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo import-lerobot`."""
    parser.add_argument("dataset", type=Path, metavar="DS", help="LeRobotDataset folder (the one holding meta/)")
    parser.add_argument("--out", required=True, type=Path, help="episodes folder to write")
    parser.add_argument("--into-existing", action="store_true", help="add to an --out that already holds episodes")


def main(args: argparse.Namespace) -> int:
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
