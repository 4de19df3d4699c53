"""`wmpo loop-report`: every policy of a loop run on the same held-out start states."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wmpo_core.io_utils import StageError, read_json
from wmpo_core.loop import report_rows

HELP = "evaluate every policy of a loop run (robot version and candidate per iteration) on the same held-out start states"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo loop-report`."""
    parser.add_argument("--out", type=Path, required=True, help="run directory of `wmpo loop`")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per policy (default 100)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="offset in the evaluation seed range (default 0: the start states of `wmpo compare`)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print one JSON row per policy")


def main(args: argparse.Namespace) -> int:
    """Evaluate the run's versions and print the table."""
    if args.episodes < 1:
        print("wmpo loop-report: --episodes must be >= 1", file=sys.stderr)
        return 2
    run_dir = Path(args.out).resolve()
    if (run_dir / "loop.json").is_file() and read_json(run_dir / "loop.json").get("robot") == "ros":
        from wmpo_core.robot_loop import print_robot_report

        return print_robot_report(run_dir, as_json=args.json)
    try:
        rows = report_rows(run_dir, args.episodes, args.seed_offset, args.temperature,
                           log=run_dir / "report" / "commands.log")
    except (StageError, OSError, ValueError, KeyError) as exc:
        print(f"wmpo loop-report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{run_dir.name}: {args.episodes} held-out episodes per policy, seeds "
                        f"{rows[0]['seeds'][0]}-{rows[0]['seeds'][1]}, temperature {rows[0]['temperature']:g}")
    for col in ("iteration", "policy", "version", "success", "95% CI", "mean success length", "gate"):
        table.add_column(col)
    for r in rows:
        lo, hi = r["ci95"]
        length = r.get("mean_success_length")
        table.add_row("-" if r["iteration"] is None else str(r["iteration"]), r["role"], str(r["version"]),
                      f"{r['successes']}/{r['episodes']}", f"{100 * lo:.1f}-{100 * hi:.1f}%",
                      f"{length:.1f}" if length else "-", r.get("gate", "") if r["role"] == "candidate" else "")
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # piped: rich would fold to 80 columns
    return 0
