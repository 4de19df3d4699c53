"""`wmpo demo`: the whole loop on the simulated robot, one stage after another.

Each stage writes its outputs under ``--out`` and a ``<stage>/stage.json`` marker when
it finishes; re-running the demo reuses every finished stage (``--fresh`` starts over).
Stages that need ROS 2 run the `wmpo` ROS commands as subprocesses, so this module
itself imports no rclpy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HELP = "run the loop on the simulated robot (record through ROS 2, list episodes) and write a report"


@dataclass
class Stage:
    """One step of the demo: a name, a rough duration on a 2-core CPU and what it runs."""

    name: str
    title: str
    estimate_s: float
    run: Callable[[argparse.Namespace, Path], dict]


def _wmpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "wmpo_core.cli", *args]


def _run(cmd: list[str]) -> None:
    print("  $ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")


def _stage_record_demos(args: argparse.Namespace, out: Path) -> dict:
    episodes = out / "episodes" / "demos"
    if episodes.exists():
        # A half-finished earlier attempt: start this stage over rather than mixing runs.
        shutil.rmtree(episodes)
    _run(
        _wmpo(
            "record", "--sim", "--task", args.task, "--episodes", str(args.episodes),
            "--out", str(episodes), "--seed", str(args.seed), "--noise", str(args.noise),
        )
    )
    return {"episodes_dir": str(episodes)}


def _stage_list(args: argparse.Namespace, out: Path) -> dict:
    episodes = out / "episodes" / "demos"
    proc = subprocess.run(_wmpo("episodes", str(episodes), "--json"), capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"listing {episodes} failed: {proc.stderr.strip()}")
    rows = json.loads(proc.stdout)
    subprocess.run(_wmpo("episodes", str(episodes)))
    ok = [r for r in rows if "error" not in r]
    successes = sum(1 for r in ok if r.get("success"))
    return {"episodes": len(ok), "successes": successes, "rows": rows}


STAGES: list[Stage] = [
    Stage("record_demos", "Record scripted episodes through the ROS 2 graph", 90.0, _stage_record_demos),
    Stage("list_episodes", "List the recorded episodes", 5.0, _stage_list),
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--task", default="lift", help="simulated task (default: lift)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes to record (default: 4)")
    parser.add_argument("--seed", type=int, default=1000, help="first episode seed (default: 1000)")
    parser.add_argument("--noise", type=float, default=0.0, help="scripted demonstrator noise (default: 0)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished stages and start over")


def _write_report(out: Path, results: dict[str, dict]) -> None:
    (out / "report.json").write_text(json.dumps(results, indent=2))


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(s.estimate_s for s in STAGES)
    print(f"wmpo demo: {len(STAGES)} stages, about {total / 60:.0f} min on a 2-core CPU; output in {out}/")
    for i, stage in enumerate(STAGES, 1):
        done = (out / stage.name / "stage.json").exists()
        print(f"  {i}. {stage.title} (~{stage.estimate_s:.0f} s){'  [done, reused]' if done else ''}")
    results: dict[str, dict] = {}
    for i, stage in enumerate(STAGES, 1):
        marker = out / stage.name / "stage.json"
        if marker.exists():
            results[stage.name] = json.loads(marker.read_text())
            continue
        print(f"\n[{i}/{len(STAGES)}] {stage.title}", flush=True)
        t0 = time.monotonic()
        try:
            result = stage.run(args, out)
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"wmpo demo: stage '{stage.name}' failed: {exc}", file=sys.stderr)
            _write_report(out, results)
            return 1
        result["seconds"] = round(time.monotonic() - t0, 1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(result, indent=2))
        results[stage.name] = result
        print(f"    done in {result['seconds']:.0f} s", flush=True)
    _write_report(out, results)
    print(f"\nwmpo demo: finished; report in {out / 'report.json'}")
    return 0
