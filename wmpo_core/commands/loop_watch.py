"""`wmpo loop-watch`: a robot run's live watch (wmpo_core.robot_loop.LiveWatch) after the loop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from wmpo_core.io_utils import StageError, read_json
from wmpo_core.loop import Loop, LoopConfig

HELP = "robot run: watch the promoted version and roll back to the previous one when it does worse"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo loop-watch`."""
    parser.add_argument("--out", type=Path, required=True, help="the `wmpo loop --robot ros` run directory")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between looks (default 5)")
    parser.add_argument("--once", action="store_true", help="look once, print the state and exit")


def main(args: argparse.Namespace) -> int:
    """Watch a robot run's promoted version (wmpo_core.robot_loop.LiveWatch) until interrupted; the run's
    settings come from RUN/loop.json. Not beside a running `wmpo loop` of the same run, which watches already."""

    from wmpo_core.robot_loop import LiveWatch, forbid_simulator

    stored = args.out / "loop.json"
    if not stored.is_file():
        print(f"wmpo loop-watch: {stored}: not a loop run", file=sys.stderr)
        return 2
    if not args.interval > 0:
        print(f"wmpo loop-watch: --interval must be > 0, got {args.interval}", file=sys.stderr)
        return 2
    try:
        settings = read_json(stored)
        cfg = LoopConfig(**{k: v for k, v in settings.items() if k in {f.name for f in fields(LoopConfig)}})
        if cfg.robot != "ros":
            raise StageError(f"{args.out}: a {cfg.robot!r} run; the live watch is for `--robot ros` runs")
        forbid_simulator("`wmpo loop-watch`")
        live = LiveWatch(Loop(cfg), interval_s=args.interval, publish=not args.once)
        if args.once:
            record = live.check()
            print(json.dumps(record or live.state, indent=2))
            return 0
        live.start()
        print(f"wmpo loop-watch: watching {args.out} (head {live.loop.versions.current['version']}); Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    except (StageError, OSError, ValueError, TypeError) as exc:
        print(f"wmpo loop-watch: {exc}", file=sys.stderr)
        return 1
