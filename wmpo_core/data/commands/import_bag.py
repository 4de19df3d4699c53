"""`wmpo import-bag SRC... --map MAP.yaml --out DIR`: episodes from any robot's rosbag2.

Import episodes from foreign rosbag2 bags (MCAP or sqlite3, with or without metadata.yaml) through a
mapping file: image topics -> cameras, an end-effector pose, joint-state, twist or delta-command topic
-> the stack's 7-dim delta actions at the control rate, gripper, episode split (whole bag, pauses or a
marker topic), instruction, success topic (see docs/real_robot.md).
The sources are only read; an existing non-empty --out is refused unless --into-existing. Exit
status 0, 2 for a bad map or source (nothing of that source is kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.data.bag import EpisodeError

HELP = "episodes from any robot's rosbag2 through a mapping file"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo import-bag`."""
    parser.add_argument("src", nargs="+", type=Path, metavar="SRC", help="rosbag2 directories or .mcap / .db3 files")
    parser.add_argument("--map", required=True, type=Path, help="mapping file (YAML)")
    parser.add_argument("--out", required=True, type=Path, help="episodes folder to write")
    parser.add_argument("--into-existing", action="store_true",
                        help="add to an --out that already holds episodes (an existing episode is never replaced)")


def main(args: argparse.Namespace) -> int:
    """Run `wmpo import-bag`."""
    from wmpo_core.data.import_bag import BagImportError, import_bag, load_map

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.into_existing:
        print(f"wmpo import-bag: {out} exists and is not empty; pass --into-existing to add to it", file=sys.stderr)
        return 2
    try:
        bag_map = load_map(args.map)
        total = 0
        for src in args.src:
            if src.resolve() == out.resolve() or out.resolve() in src.resolve().parents:
                raise BagImportError(f"{src}: lies inside --out {out}; import into another folder")
            for ep in import_bag(src, bag_map, out):
                total += 1
                label = "-" if ep.success is None else ("yes" if ep.success else "no")
                note = f" ({ep.note})" if ep.note else ""
                print(f"{ep.path.name}: {ep.steps} steps ({ep.duration_s:.1f} s) success {label}  <- {src}{note}")
    except (BagImportError, EpisodeError) as exc:
        print(f"wmpo import-bag: {exc}", file=sys.stderr)
        return 2
    print(f"imported {total} episode(s) into {out}", file=sys.stderr)
    return 0
