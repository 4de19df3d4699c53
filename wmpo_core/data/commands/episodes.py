"""`wmpo episodes DIR [--json] [--repair]`: list recorded episode bags.

List recorded episodes (one line each, or --json); status is complete, incomplete (repaired after a
crash), needs-repair (writer killed, file truncated) or recording (a running recorder holds it);
--repair rewrites the needs-repair bags. Exit status: 0 all bags readable, 1 DIR is not a directory,
3 some bag is corrupt (one line per bad bag on stderr, the others are still listed), 4 some bag
needs --repair (none corrupt).
"""

from __future__ import annotations

import argparse
import json
import sys

from wmpo_core.data.bag import EpisodeError, RepairReport, repair_folder
from wmpo_core.data.episodes import STATUS_NEEDS_REPAIR, EpisodeInfo, list_episodes

EXIT_OK = 0
EXIT_BAD_PATH = 1
EXIT_CORRUPT = 3
EXIT_NEEDS_REPAIR = 4

HELP = "list recorded episodes; --repair recovers crashed bags"

_COLUMNS = ("episode_id", "task", "steps", "duration_s", "success", "policy_version", "status")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo episodes`."""
    parser.add_argument("dir", metavar="DIR", help="folder holding one rosbag2 directory per episode")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument(
        "--repair", action="store_true",
        help="first rewrite crashed or truncated bags as valid bags marked complete: false",
    )
    parser.add_argument(
        "--keep-original", action="store_true",
        help="with --repair: keep each crashed original as <name>.mcap.crashed",
    )


def _cell(info: EpisodeInfo, col: str) -> str:
    value = getattr(info, col)
    if col == "duration_s":
        return f"{value:.1f}"
    if col == "success":
        text = "-" if value is None else ("yes" if value else "no")
        return f"{text} (label)" if info.labelled else text
    return str(value) if value != "" else "-"


def _table(infos: list[EpisodeInfo]) -> str:
    # Plain aligned text: stays one line per episode in pipes and narrow terminals.
    rows = [[c.replace("_s", " s").replace("_", " ") for c in _COLUMNS]]
    rows += [[_cell(i, c) for c in _COLUMNS] for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(args: argparse.Namespace) -> int:
    """Run `wmpo episodes`."""
    try:
        if args.repair:
            for result in repair_folder(args.dir, keep_original=args.keep_original):
                if isinstance(result, RepairReport):
                    print(f"repaired {result.summary()}", file=sys.stderr)
        entries = list_episodes(args.dir)
    except EpisodeError as exc:
        print(f"wmpo episodes: {exc}", file=sys.stderr)
        return EXIT_BAD_PATH
    infos = [e for e in entries if isinstance(e, EpisodeInfo)]
    errors = [e for e in entries if isinstance(e, EpisodeError)]
    for err in errors:
        print(f"wmpo episodes: error: {err}", file=sys.stderr)
    if args.json:
        out = [e.to_dict() if isinstance(e, EpisodeInfo) else {"path": str(e.path), "error": str(e)} for e in entries]
        print(json.dumps(out, indent=2))
    elif infos:
        print(_table(infos))
    else:
        print(f"no episodes in {args.dir}", file=sys.stderr)
    needs_repair = [i for i in infos if i.status == STATUS_NEEDS_REPAIR]
    if needs_repair and not args.json:
        print(f"{len(needs_repair)} crashed bag(s) need repair: wmpo episodes {args.dir} --repair", file=sys.stderr)
    if errors:
        return EXIT_CORRUPT
    return EXIT_NEEDS_REPAIR if needs_repair else EXIT_OK
