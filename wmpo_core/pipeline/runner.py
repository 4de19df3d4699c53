"""Steps and how they run: a resumable marker per step, and `wmpo` commands as subprocesses.

A :class:`Step` names its folder, what it reads (``inputs``) and what its marker will hold
(``outputs``). :func:`run_stage` runs a step unless its marker ``<folder>/stage.json`` exists;
the marker is written last and atomically, so a step killed half-way runs again and a finished
one is never run twice. Training steps run `wmpo` commands in a subprocess (:func:`run_wmpo`):
each command's memory is returned when it ends, and its log goes to the step's ``commands.log``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic

MARKER = "stage.json"
STOP_GRACE_S = 60.0  # an interrupted command's own orderly stop (a graph: recorder, then each node)


@dataclass
class Step:
    """One step of a pipeline: its folder, what it reads, what its marker holds and what it runs.

    ``inputs`` are the step's arguments as data (paths, the recipe, sizes), so a plan can be
    inspected before anything runs; ``run(folder)`` returns the marker's contents.
    """

    name: str
    title: str
    folder: Path
    run: Callable[[Path], dict[str, Any]]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    @property
    def marker(self) -> Path:
        """The file whose presence says the step finished (it holds the step's result)."""
        return self.folder / MARKER

    @property
    def done(self) -> bool:
        """True when the step finished before."""
        return self.marker.is_file()


def stage_done(stage_dir: Path) -> bool:
    """True when the stage in ``stage_dir`` finished (its marker exists)."""
    return (stage_dir / MARKER).is_file()


def run_stage(stage_dir: Path, title: str, fn: Callable[[Path], dict[str, Any]],
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``fn(stage_dir)`` unless its marker exists; the marker holds its result and duration.

    The marker is written last and atomically: a stage killed half-way has none and runs again.
    """
    marker = stage_dir / MARKER
    if marker.is_file():
        result = read_json(marker)
        say(f"  {title}: done before ({result.get('seconds', 0):.0f} s), reused")
        return result
    say(f"  {title} ...")
    stage_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result = fn(stage_dir)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(marker, result)
    say(f"  {title}: done in {result['seconds']:.0f} s")
    return result


def run_step(step: Step, say: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`run_stage` of one :class:`Step`."""
    return run_stage(step.folder, step.title, step.run, say=say)


def wmpo_command(*args: str) -> list[str]:
    """The `wmpo` command line for ``args``, run with this interpreter."""
    return [sys.executable, "-m", "wmpo_core.cli", *args]


def run_wmpo(*args: str, log: Path | None = None, capture: bool = False, ok_codes: tuple[int, ...] = (0,),
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a `wmpo` subcommand; its output goes to ``log`` (appended) or the terminal.

    ``capture`` returns stdout as text (stderr still goes to ``log``). A StageError quoting
    the end of the log when the exit code is not in ``ok_codes``.
    """
    cmd = wmpo_command(*args)
    print("    $ wmpo " + " ".join(args), flush=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    sink = open(log, "a") if log is not None else None  # noqa: SIM115 - closed below
    try:
        if sink is not None:
            sink.write(f"$ wmpo {' '.join(args)}\n")
            sink.flush()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else sink, stderr=sink, text=True,
                              env=env, stdin=subprocess.DEVNULL) as child:
            try:
                stdout, _ = child.communicate()
            except KeyboardInterrupt:
                _stop_interrupted(child)
                raise
        proc = subprocess.CompletedProcess(cmd, child.returncode, stdout)
    finally:
        if sink is not None:
            sink.close()
    if proc.returncode not in ok_codes:
        tail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
        raise StageError(f"`wmpo {' '.join(args)}` failed with exit code {proc.returncode}"
                         + (f"; end of {log}:\n{tail}" if tail else ""))
    return proc


def _stop_interrupted(child: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """After Ctrl-C: let the command stop by itself, then make it.

    Ctrl-C reaches the whole foreground process group, the command included, and an interrupted
    command may have work to finish (`wmpo record` stops its nodes in order, recorder first, so
    its bag is complete); subprocess.run would kill it 0.25 s after the interrupt. One still
    running after ``grace_s`` gets SIGTERM, then SIGKILL; a second Ctrl-C kills it at once.
    """
    try:
        try:
            child.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.communicate(timeout=10.0)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()


def last_json_line(text: str, what: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (commands print logs before it)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(text)  # an indented multi-line JSON document
    except json.JSONDecodeError as exc:
        raise StageError(f"{what}: no JSON in its output") from exc
