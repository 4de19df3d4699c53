"""`wmpo label DIR --episode ID --success yes|no [--at SECONDS]` and `wmpo label DIR --csv FILE`.

Label episodes' success after the fact (stored beside each bag in wmpo_label.json; the bag is not
rewritten): --episode ID --success yes|no [--at SECONDS after the bag's first message], or --csv
FILE with columns episode_id,success[,at_s]; --clear removes a label. `wmpo episodes` and every
trainer see the label. Exit status 0, or 2 for a bad id, value or file (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from wmpo_core.data.bag import EpisodeError
from wmpo_core.data.labels import (
    LabelError,
    LabelRow,
    clear_label,
    find_episode,
    label_episodes,
    read_label_csv,
)

HELP = "label episodes' success after the fact (one, or a CSV)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo label`."""
    parser.add_argument("dir", metavar="DIR", help="folder holding one rosbag2 directory per episode")
    parser.add_argument("--episode", metavar="ID", help="episode id (as `wmpo episodes DIR` lists it)")
    parser.add_argument("--success", metavar="yes|no", help="the operator's judgement")
    parser.add_argument("--at", type=float, metavar="SECONDS",
                        help="with --success yes: when success first showed, seconds after the bag's first message")
    parser.add_argument("--csv", metavar="FILE", help="label many episodes: header episode_id,success[,at_s]")
    parser.add_argument("--clear", action="store_true", help="with --episode: remove its label")
    parser.add_argument("--force", action="store_true", help="replace labels that say something else")


def _rows(args: argparse.Namespace) -> list[LabelRow]:
    from wmpo_core.data.labels import check_at, parse_success

    if args.csv:
        if args.episode or args.success or args.at is not None:
            raise LabelError("--csv labels from the file; leave out --episode, --success and --at")
        return read_label_csv(args.csv)
    if not args.episode or args.success is None:
        raise LabelError("give --episode ID --success yes|no (or --csv FILE, or --episode ID --clear)")
    success = parse_success(args.success, "--success")
    return [LabelRow(args.episode, success, check_at(args.at, success, "--at"), "--episode")]


def main(args: argparse.Namespace) -> int:
    """Run `wmpo label`."""
    try:
        if args.clear:
            if not args.episode or args.success is not None or args.csv:
                raise LabelError("--clear takes --episode ID only")
            bag = find_episode(args.dir, args.episode, "--episode")
            removed = clear_label(bag)
            print(f"{bag.name}: {'label removed' if removed else 'had no label'}; the recorded success applies")
            return 0
        results = label_episodes(args.dir, _rows(args), force=args.force)
    except (LabelError, EpisodeError) as exc:
        print(f"wmpo label: {exc}", file=sys.stderr)
        return 2
    from wmpo_core.data.labels import read_label

    for bag, changed in results:
        label = read_label(bag)
        assert label is not None
        at = "" if label.at_s is None else f" at {label.at_s:g} s"
        print(f"{bag.name}: success {'yes' if label.success else 'no'}{at}{'' if changed else ' (unchanged)'}")
    return 0
