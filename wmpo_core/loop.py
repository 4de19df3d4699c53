"""`wmpo loop`: lifelong learning on one robot: collect -> align -> improve -> gate -> push, repeated.

Iteration ``i`` of a run directory ``RUN``:

1. **collect**: ``M`` episodes with the current policy version. On the simulated robot they
   go through the ROS 2 graph (`wmpo record --sim --policy PKG`), or, with
   ``--collect-direct``, straight from the simulator into the same bag format (no ROS,
   several times faster). On the real robot (``--robot ros``) an operator records them
   with the running graph; the loop waits until ``M`` new complete episodes of the current
   version appear in ``--episodes-from``.
2. **world_model**: behavior alignment: `wmpo train-world-model --init` the previous
   iteration's world model (the first iteration starts from ``--world-model`` or pretrains
   from scratch) on all episodes so far.
3. **reward**: `wmpo train-reward` on all episodes so far, then `wmpo calibrate-reward`: the
   success threshold re-chosen on imagined replays, in the aligned world model, of the
   episodes the loop collected (all training episodes when those have one outcome only).
4. **grpo**: `wmpo grpo` in imagination from the current policy: the candidate package.
5. **gate**: `wmpo eval` of current and candidate on the same held-out start states
   (:data:`~wmpo_core.rl.config.EVALUATION_SEEDS`, never used for collection), then the
   gate rule (:func:`gate_decision`).
6. **publish**: when the gate accepts, `wmpo export` (sign, parent = current version) and
   `wmpo push` (copy to the robot's policy folder, ask its policy node to load it if
   ``--load-node`` is given); the pushed copy becomes the current version.

With ``--robot ros`` no simulator is used (a guard makes it an error): the gate is an
imagination screen on held-out real first frames and publish pushes a canary that the
robot's own labelled episodes promote or roll back (wmpo_core.robot_loop, wmpo_core.canary).

Gate rule (paired, one-sided): both policies run the same ``E`` seeded start states. Let
``b`` be the states only the candidate solves and ``c`` those only the current policy
solves. The candidate is pushed when ``b > c`` and the exact one-sided sign test
(McNemar) on the ``b + c`` discordant states gives ``p = P(X >= b | X ~ Bin(b + c, 1/2))
<= alpha`` (``--gate-alpha``, default 0.05). ``--gate-alpha 1`` pushes whenever the
candidate solves strictly more states. A refused candidate changes nothing: the version
chain and the robot keep the current version.

Layout: ``RUN/loop.json`` (settings, checked on resume), ``RUN/versions.json`` (the version
chain: every pushed version with its parent), ``RUN/keys/`` (signing key pair unless
``--key``), ``RUN/robot/policies/`` (default push target), ``RUN/iter_<i>/<stage>/``
with each stage's outputs and ``stage.json`` marker, ``RUN/iter_<i>/metrics.json``.
A stage with a marker is never run again, so an interrupted loop resumes at the first
unfinished stage; a half-finished stage is redone (recording) or resumed by its command
(training runs resume from their checkpoints).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic  # re-exported: demo and older imports
from wmpo_core.stats import sign_test_p_value  # re-exported

HELP = "lifelong learning: collect, align world and reward models, GRPO in imagination, gate, push"
HELP_loop_report = "evaluate every policy of a loop run (robot version and candidate per iteration) on the same held-out start states"
MARKER = "stage.json"
ITERATION_STAGES = ("collect", "world_model", "reward", "grpo", "gate", "publish")
# Offsets inside the shared seed ranges (wmpo_core.rl.config) that keep the loop's start states
# apart from `wmpo demo`'s, which start at offset 0 of each range.
COLLECT_SEED_OFFSET = 50_000
GATE_SEED_OFFSET = 50_000


# ============================================================================ stage runner
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


# ============================================================================ commands
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
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else sink, stderr=sink, text=True,
                              env=env, stdin=subprocess.DEVNULL)
    finally:
        if sink is not None:
            sink.close()
    if proc.returncode not in ok_codes:
        tail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
        raise StageError(f"`wmpo {' '.join(args)}` failed with exit code {proc.returncode}"
                         + (f"; end of {log}:\n{tail}" if tail else ""))
    return proc


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


def train_calibrated_reward(data: Path, world_model: Path, out: Path, *, config: str | None = None,
                            steps: int | None = None, log: Path | None = None,
                            calibrate_on: list[Path] | None = None) -> dict[str, Any]:
    """`wmpo train-reward` on the real episodes in ``data``, then `wmpo calibrate-reward` in ``world_model``.

    The classifier learns from real video only (adding imagined replays to its training set made
    it worse on real video); its success threshold is then re-chosen on imagined replays of
    labelled episodes, because GRPO scores imagined video and those scores run higher or lower
    than real video's. The replays are of ``calibrate_on`` (e.g. the current policy's own
    episodes, whose imagined look is what GRPO will score) when those hold both outcomes, else of
    all of ``data``. Writes ``out/run`` (trained) and ``out/calibrated``; returns the summary
    with ``run`` = the model GRPO should use. With one outcome only there is nothing to
    calibrate against: ``run`` is the trained model and the summary says why.
    """
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)  # train-reward has no resume: a half-trained model is retrained
    args = ["train-reward", "--episodes", str(data), "--out", str(run)]
    if config:
        args += ["--config", config]
    if steps:
        args += ["--steps", str(steps)]
    summary = last_json_line(run_wmpo(*args, log=log, capture=True).stdout, "wmpo train-reward")
    result: dict[str, Any] = {"trained": str(run),
                              **{k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)}}

    def outcomes(folders: list[Path]) -> tuple[int, int]:
        rows = [r for f in folders for r in list_complete_episodes(f)]
        return sum(1 for r in rows if r["success"]), len(rows)

    folders = list(calibrate_on or [])
    if folders:
        successes, total = outcomes(folders)
        if not 0 < successes < total:
            print(f"    calibration: {successes} of {total} of the policy's episodes succeeded; calibrating on all "
                  "training episodes instead", flush=True)
            folders = []
    if not folders:  # the counts below always belong to the folders calibrated on
        folders = [data]
        successes, total = outcomes(folders)
    if not 0 < successes < total:
        why = f"{successes} of {total} labelled episodes succeeded (calibration needs both outcomes)"
        print(f"    reward threshold not calibrated on imagined replays: {why}; GRPO uses the real-video threshold",
              flush=True)
        return result | {"run": str(run), "calibration_skipped": why}
    calibrated = out / "calibrated"
    if calibrated.exists():
        shutil.rmtree(calibrated)
    proc = run_wmpo("calibrate-reward", "--model", str(run), "--world-model", str(world_model), "--episodes",
                    *map(str, folders), "--out", str(calibrated), "--json", log=log, capture=True)
    cal = last_json_line(proc.stdout, "wmpo calibrate-reward")
    return result | {"run": str(calibrated), "tau_real": cal["tau_before"], "tau": cal["tau"],
                     "imagined_f1_before": cal["f1_before"], "imagined_f1": cal["f1"], "imagined_auc": cal["auc"],
                     "calibration_episodes": cal["episodes"], "calibrated_on": [str(f) for f in folders]}


# ============================================================================ collection
def record_in_sim(policy: str, task: str, count: int, first_seed: int, out: Path, *,
                  max_steps: int | None = None, noise: float = 0.0, temperature: float = 0.0,
                  steps_after_success: int = 0) -> list[dict[str, Any]]:
    """Episodes of ``policy`` (package dir or ``scripted``) straight from the simulator, one bag each.

    The bags follow the recorder's schema (wmpo_core.data.sim_bags), without ROS in the loop.
    Seeds ``first_seed .. first_seed + count - 1``. Returns one row per episode.
    """
    from wmpo_core.data.bag import read_metadata
    from wmpo_core.data.sim_bags import collect_sim_episodes
    from wmpo_core.robot_loop import check_simulator

    check_simulator("recording in the simulator")
    paths = collect_sim_episodes(task, count, out, seed=first_seed, noise=noise, policy=policy, max_steps=max_steps,
                                 temperature=temperature if policy != "scripted" else 0.0,
                                 steps_after_success=steps_after_success)
    rows = []
    for path in paths:
        meta = read_metadata(path)
        rows.append({"episode_id": meta.episode_id, "path": str(path), "seed": meta.seed,
                     "success": bool(meta.success), "policy_version": meta.policy_version})
    return rows


def list_complete_episodes(folder: Path) -> list[dict[str, Any]]:
    """Readable, finished episodes of ``folder`` as dicts (id, success, policy_version, steps, path)."""
    from wmpo_core.data.episodes import list_episodes

    if not folder.is_dir():
        return []
    return [{"episode_id": e.episode_id, "success": e.success, "policy_version": e.policy_version,
             "steps": e.steps, "path": str(e.path)}
            for e in list_episodes(folder) if not isinstance(e, Exception) and e.status == "complete"]


def record_through_ros(policy: str, task: str, count: int, first_seed: int, out: Path, *,
                       max_steps: int | None = None, log: Path | None = None,
                       public_key: Path | None = None, noise: float | None = None,
                       temperature: float | None = None, extra_steps: int | None = None) -> list[dict[str, Any]]:
    """`wmpo record --sim --policy POLICY`: the simulated robot through the ROS 2 graph.

    The policy node loads only packages signed by a key it trusts: ``public_key``.
    """
    from wmpo_core.robot_loop import check_simulator

    check_simulator("wmpo record --sim (the simulated robot)")
    if out.exists():
        shutil.rmtree(out)  # a half-recorded earlier attempt: record the stage afresh
    args = ["record", "--sim", "--task", task, "--policy", policy, "--episodes", str(count),
            "--seed", str(first_seed), "--out", str(out)]
    if public_key is not None:
        args += ["--public-key", str(public_key)]
    if noise is not None:
        args += ["--noise", str(noise)]
    if temperature is not None and policy != "scripted":
        args += ["--temperature", str(temperature)]
    if extra_steps is not None:
        args += ["--extra-steps", str(extra_steps)]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    run_wmpo(*args, log=log)
    return list_complete_episodes(out)


def link_episodes(sources: list[Path], out: Path) -> int:
    """Make ``out`` a folder of links to every episode of ``sources`` (all data so far); returns the count."""
    from wmpo_core.data.bag import episode_dirs

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n = 0
    for src in sources:
        if not src.is_dir():
            raise StageError(f"{src}: episodes folder does not exist")
        for ep in episode_dirs(src):
            link = out / ep.name
            if link.exists():
                raise StageError(f"{ep}: episode id {ep.name} appears twice in the loop's data")
            link.symlink_to(ep.resolve(), target_is_directory=True)
            n += 1
    return n


# ============================================================================ gate
@dataclass
class GateDecision:
    """Outcome of the gate: paired counts on the shared start states, the p-value and the verdict."""

    accept: bool
    reason: str
    current_successes: int
    candidate_successes: int
    episodes: int
    candidate_only: int  # b: start states only the candidate solved
    current_only: int  # c: start states only the current policy solved
    p_value: float
    alpha: float


def gate_decision(current: list[dict[str, Any]], candidate: list[dict[str, Any]], alpha: float) -> GateDecision:
    """Apply the gate rule to per-episode results (``seed``, ``success``) of the two policies."""
    cur = {int(r["seed"]): bool(r["success"]) for r in current}
    cand = {int(r["seed"]): bool(r["success"]) for r in candidate}
    if set(cur) != set(cand) or not cur:
        raise StageError(f"gate: the two evaluations must cover the same start states; got seeds "
                         f"{sorted(cur)} and {sorted(cand)}")
    b = sum(1 for s in cur if cand[s] and not cur[s])
    c = sum(1 for s in cur if cur[s] and not cand[s])
    p = sign_test_p_value(b, c)
    accept = b > c and p <= alpha
    if accept:
        reason = f"candidate better: solves {b} start state(s) the current policy fails, loses {c}; p = {p:.3g} <= {alpha}"
    elif b <= c:
        reason = f"candidate not better: wins {b}, loses {c} of {len(cur)} shared start states"
    else:
        reason = f"improvement not significant: wins {b}, loses {c}; p = {p:.3g} > alpha {alpha}"
    return GateDecision(accept, reason, sum(cur.values()), sum(cand.values()), len(cur), b, c, p, alpha)


def evaluate(policy: str, task: str, episodes: int, first_seed: int, *, max_steps: int | None = None,
             log: Path | None = None, temperature: float = 0.0) -> dict[str, Any]:
    """`wmpo eval --json` of ``policy`` on seeds ``first_seed ..`` (sampled at ``temperature``); its JSON report."""
    from wmpo_core.robot_loop import check_simulator

    check_simulator(f"wmpo eval --policy {policy}")
    args = ["eval", "--policy", policy, "--task", task, "--episodes", str(episodes), "--seed", str(first_seed),
            "--temperature", str(temperature), "--json"]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    proc = run_wmpo(*args, log=log, capture=True)
    return last_json_line(proc.stdout, f"wmpo eval --policy {policy}")


# ============================================================================ version chain
class VersionChain:
    """``RUN/versions.json``: every version the robot ran, in order, each with its parent; and, for a
    robot run, every decision about a candidate (``decisions``: screen refusals, canary promotions and
    rollbacks, wmpo_core.robot_loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path) if path.is_file() else {}
        self.entries: list[dict[str, Any]] = data.get("versions", [])
        self.decisions: list[dict[str, Any]] = data.get("decisions", [])

    @property
    def current(self) -> dict[str, Any]:
        """The newest version (the one the robot runs)."""
        if not self.entries:
            raise StageError(f"{self.path}: empty version chain")
        return self.entries[-1]

    def append(self, entry: dict[str, Any]) -> None:
        """Add a version whose parent must be the current one; saved at once."""
        if self.entries and entry.get("parent") != self.current["version"]:
            raise StageError(f"{self.path}: version {entry.get('version')} has parent {entry.get('parent')}, "
                             f"expected the current version {self.current['version']}")
        if any(e["version"] == entry["version"] for e in self.entries):
            return  # the same push replayed after an interruption
        self.entries.append(entry)
        self.save()

    def record_decision(self, decision: dict[str, Any]) -> None:
        """Append a decision about a candidate; saved at once."""
        self.decisions.append(decision)
        self.save()

    def save(self) -> None:
        """Write the chain atomically."""
        data: dict[str, Any] = {"versions": self.entries}
        if self.decisions:
            data["decisions"] = self.decisions
        write_json_atomic(self.path, data)


# ============================================================================ the loop
@dataclass
class LoopConfig:
    """Settings of one loop run (stored in ``RUN/loop.json``)."""

    out: str
    policy: str
    task: str = "lift"
    robot: str = "sim"  # "sim": simulated robot; "ros": real robot, episodes recorded by an operator
    episodes_per_iter: int = 8
    # Sampling temperature of the deployed policy: collection and gate evaluation (0 = greedy).
    temperature: float = 1.0
    # Recording goes on this many steps past a success, so the reward model sees the task done.
    steps_after_success: int = 8
    collect_direct: bool = False  # sim only: straight from the simulator instead of through ROS
    episodes_from: str | None = None  # ros only: folder where the robot's recorder writes episodes
    demos: str | None = None  # extra episodes in every training set (e.g. the base policy's demonstrations)
    world_model: str | None = None  # world-model run the first iteration aligns from
    max_steps: int | None = None
    wm_config: str | None = None
    reward_config: str | None = None
    grpo_config: str | None = None
    wm_steps: int | None = None
    reward_steps: int | None = None
    grpo_iterations: int | None = None
    gate_episodes: int = 20
    gate_alpha: float = 0.05
    key: str | None = None
    push_to: str | None = None
    load_node: str | None = None
    collect_timeout_s: float = 3600.0
    # ros only (wmpo_core.robot_loop): held-out real start states of the imagination screen, and the
    # canary's sequential test (wmpo_core.canary; alpha bounds false promote and false rollback alike).
    screen: bool = True  # False: every candidate goes to the canary (a world model / reward not worth screening with)
    screen_starts: int = 4
    canary_odds_ratio: float = 3.0
    canary_alpha: float = 0.05
    canary_max_pairs: int = 30
    # Settings that may differ between a run and its resumption.
    RESUMABLE: tuple[str, ...] = field(default=("out", "collect_timeout_s", "load_node"), repr=False)

    def settings(self) -> dict[str, Any]:
        """The stored settings (everything but the RESUMABLE list itself)."""
        data = asdict(self)
        data.pop("RESUMABLE")
        return data


class Loop:
    """One lifelong-learning run in ``config.out``; :meth:`run` performs iterations until ``iterations``."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.run_dir = Path(config.out)
        self.versions = VersionChain(self.run_dir / "versions.json")

    # -- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create or check ``RUN/loop.json``, the key pair and the first version of the chain."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stored_path = self.run_dir / "loop.json"
        if stored_path.is_file():
            stored = read_json(stored_path)
            diff = sorted(k for k, v in cfg.settings().items()
                          if k not in cfg.RESUMABLE and k in stored and stored[k] != v)
            if diff:
                raise StageError(f"{stored_path}: this run was started with other settings ("
                                 + ", ".join(f"{k}: {stored[k]!r} now {getattr(cfg, k)!r}" for k in diff)
                                 + "); use the same settings or another --out")
        else:
            self._check_inputs()
            write_json_atomic(stored_path, cfg.settings())
        if cfg.key is None:
            keys = self.run_dir / "keys"
            if not (keys / "wmpo_policy_signing.pem").is_file():
                run_wmpo("keygen", "--out", str(keys))
        if not self.versions.entries:
            # The robot's policy node loads only packages signed by a key it trusts: sign a copy of the first one.
            from wmpo_core.registry.package import read_package_manifest

            pkg = self.run_dir / "initial" / "package"
            if pkg.exists():
                shutil.rmtree(pkg)  # an export cut short by an interruption
            log = self.run_dir / "initial" / "commands.log"
            run_wmpo("export", cfg.policy, "--out", str(pkg), "--key", str(self.private_key), log=log)
            manifest = read_package_manifest(pkg)
            installed = self._push(pkg, manifest["version"], load=False, log=log)[0]
            self.versions.append({"version": manifest["version"], "parent": manifest.get("parent"),
                                  "package": str(pkg), "installed": installed, "iteration": None,
                                  "source": f"initial policy {cfg.policy}"})

    def _check_inputs(self) -> None:
        cfg = self.config
        if cfg.robot not in ("sim", "ros"):
            raise StageError(f"--robot: expected sim or ros, got {cfg.robot!r}")
        if cfg.robot == "ros" and not cfg.episodes_from:
            raise StageError("--robot ros: give --episodes-from, the folder the robot's recorder writes to")
        if cfg.robot == "ros" and not cfg.load_node:
            raise StageError("--robot ros: give --load-node, the policy node the canary is pushed to and switched on "
                             "(e.g. /policy)")
        if cfg.robot == "ros":
            from wmpo_core.robot_loop import canary_rule

            if cfg.screen_starts < 1:
                raise StageError(f"--screen-starts: expected >= 1, got {cfg.screen_starts}")
            try:
                canary_rule(cfg)
            except ValueError as exc:
                raise StageError(f"--canary-*: {exc}") from None
        if cfg.episodes_per_iter < 1 or cfg.gate_episodes < 1:
            raise StageError("--episodes-per-iter and --gate-episodes must be positive")
        if not 0 < cfg.gate_alpha <= 1:
            raise StageError(f"--gate-alpha: expected a value in (0, 1], got {cfg.gate_alpha}")
        for name in ("policy", "demos", "world_model", "wm_config", "reward_config", "grpo_config", "key"):
            value = getattr(cfg, name)
            if value and not Path(value).exists():
                raise StageError(f"--{name.replace('_', '-')} {value}: does not exist")

    @property
    def private_key(self) -> Path:
        """Signing key of the run."""
        return Path(self.config.key) if self.config.key else self.run_dir / "keys" / "wmpo_policy_signing.pem"

    @property
    def public_key(self) -> Path:
        """Public key the pushed packages are verified with."""
        key = self.private_key
        return key.with_name(key.name.removesuffix(".pem") + ".pub.pem")

    @property
    def push_target(self) -> str:
        """Policy folder on the robot (local path or host:path)."""
        return self.config.push_to or str(self.run_dir / "robot" / "policies")

    def iter_dir(self, i: int) -> Path:
        """Folder of iteration ``i``."""
        return self.run_dir / f"iter_{i:03d}"

    def completed_iterations(self) -> int:
        """Iterations whose last stage finished."""
        i = 0
        while stage_done(self.iter_dir(i) / ITERATION_STAGES[-1]):
            i += 1
        return i

    @staticmethod
    def local_package(entry: dict[str, Any]) -> str:
        """The package a version runs from on this machine: its copy in the robot's folder when local."""
        installed = entry.get("installed")
        if installed and ":" not in installed and Path(installed).is_dir():
            return installed
        return entry["package"]

    # -- stages --------------------------------------------------------------------------
    def stage_collect(self, i: int, current: dict[str, Any], d: Path) -> dict[str, Any]:
        """Collect ``episodes_per_iter`` episodes with the current version into ``d/episodes``."""
        from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS

        cfg = self.config
        out = d / "episodes"
        m = cfg.episodes_per_iter
        if cfg.robot == "ros":
            rows = self._wait_for_robot_episodes(current["version"], out, d)
            mode = f"real robot, episodes from {cfg.episodes_from}"
        else:
            first = POLICY_ROLLOUT_SEEDS.seeds(m, offset=COLLECT_SEED_OFFSET + i * m)[0]
            if cfg.collect_direct:
                print(f"    collecting {m} episodes directly in the simulator (no ROS graph)", flush=True)
                if out.exists():
                    shutil.rmtree(out)
                rows = record_in_sim(self.local_package(current), cfg.task, m, first, out, max_steps=cfg.max_steps,
                                     temperature=cfg.temperature, steps_after_success=cfg.steps_after_success)
                mode = "simulator, direct (no ROS graph)"
            else:
                print(f"    collecting {m} episodes through the ROS 2 graph (wmpo record --sim)", flush=True)
                rows = record_through_ros(self.local_package(current), cfg.task, m, first, out, max_steps=cfg.max_steps,
                                          log=d / "commands.log", public_key=self.public_key,
                                          temperature=cfg.temperature, extra_steps=cfg.steps_after_success)
                mode = "simulated robot through the ROS 2 graph"
        if not rows:
            raise StageError(f"{out}: no complete episode was collected")
        successes = sum(1 for r in rows if r.get("success"))
        return {"mode": mode, "policy_version": current["version"], "episodes_dir": str(out),
                "episodes": len(rows), "successes": successes, "success_rate": successes / len(rows),
                "seeds": [r.get("seed") for r in rows]}

    def _wait_for_robot_episodes(self, version: str, out: Path, d: Path) -> list[dict[str, Any]]:
        """Link the first ``M`` complete episodes of ``version`` that appear in --episodes-from."""
        cfg = self.config
        source = Path(cfg.episodes_from)
        used: set[str] = set()  # episodes an earlier iteration already took
        for j in range(self.completed_iterations() + 1):
            prev = self.iter_dir(j) / "collect" / "episodes"
            if prev.is_dir() and prev != out:
                used.update(p.name for p in prev.iterdir())
        deadline = time.monotonic() + cfg.collect_timeout_s
        print(f"    waiting for {cfg.episodes_per_iter} complete episodes of {version} in {source} "
              f"(record them with the robot's recorder)", flush=True)
        while True:
            rows = [r for r in list_complete_episodes(source)
                    if r["policy_version"] == version and r["episode_id"] not in used]
            if len(rows) >= cfg.episodes_per_iter:
                break
            if time.monotonic() > deadline:
                raise StageError(f"{source}: only {len(rows)} of {cfg.episodes_per_iter} episodes of {version} "
                                 f"after {cfg.collect_timeout_s:.0f} s")
            time.sleep(5.0)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for r in rows[: cfg.episodes_per_iter]:
            (out / r["episode_id"]).symlink_to(Path(r["path"]).resolve(), target_is_directory=True)
        return rows[: cfg.episodes_per_iter]

    def _all_data(self, i: int, d: Path) -> tuple[Path, int]:
        sources = [Path(self.config.demos)] if self.config.demos else []
        sources += [self.iter_dir(j) / "collect" / "episodes" for j in range(i + 1)]
        data = d / "data"
        return data, link_episodes(sources, data)

    def stage_world_model(self, i: int, d: Path) -> dict[str, Any]:
        """Align the world model (``--init`` the previous one) on all episodes so far."""
        cfg = self.config
        data, n = self._all_data(i, d)
        run = d / "run"
        init = (self.iter_dir(i - 1) / "world_model" / "run") if i > 0 else (
            Path(cfg.world_model) if cfg.world_model else None)
        args = ["train-world-model", "--episodes", str(data), "--out", str(run)]
        if init is not None:
            args += ["--init", str(init)]
        if cfg.wm_config:
            args += ["--config", cfg.wm_config]
        if cfg.wm_steps:
            args += ["--steps", str(cfg.wm_steps)]
        proc = run_wmpo(*args, log=d / "commands.log", capture=True)
        summary = last_json_line(proc.stdout, "wmpo train-world-model")
        return {"run": str(run), "init": str(init) if init else None, "episodes": n,
                "final_loss": summary.get("final_loss")}

    def stage_reward(self, i: int, d: Path) -> dict[str, Any]:
        """Train the reward model on all episodes so far; calibrate its threshold in this iteration's world model."""
        cfg = self.config
        data, n = self._all_data(i, d)
        # Calibrated on the policy's own episodes so far: GRPO scores imagined trajectories of the policy.
        collected = [self.iter_dir(j) / "collect" / "episodes" for j in range(i + 1)]
        summary = train_calibrated_reward(data, self.iter_dir(i) / "world_model" / "run", d,
                                          config=cfg.reward_config, steps=cfg.reward_steps, log=d / "commands.log",
                                          calibrate_on=collected)
        return {"episodes": n, **summary}

    def stage_grpo(self, i: int, current: dict[str, Any], d: Path) -> dict[str, Any]:
        """GRPO in imagination from the current policy; the candidate is ``d/run/policy``."""
        cfg = self.config
        it = self.iter_dir(i)
        run = d / "run"
        data, n = self._all_data(i, d)
        args = ["grpo", "--policy", current["package"], "--world-model", str(it / "world_model" / "run"),
                "--reward", read_json(it / "reward" / MARKER)["run"], "--episodes", str(data), "--out", str(run),
                "--budget", str(n), "--quiet"]
        if cfg.grpo_config:
            args += ["--config", cfg.grpo_config]
        if cfg.grpo_iterations:
            args += ["--iterations", str(cfg.grpo_iterations)]
        candidate = run / "policy"
        if not (candidate / "manifest.json").is_file():  # else: trained, only the marker was missing
            run_wmpo(*args, log=d / "commands.log")
        from wmpo_core.registry.package import read_package_manifest

        manifest = read_package_manifest(candidate)
        return {"candidate": str(candidate), "version": manifest.get("version"), "parent": current["version"],
                "log": str(run / "log.jsonl")}

    def stage_gate(self, i: int, current: dict[str, Any], candidate: str, d: Path) -> dict[str, Any]:
        """Evaluate current and candidate on the same held-out start states; apply the gate rule.

        On the real robot: the imagination screen instead (wmpo_core.robot_loop)."""
        from wmpo_core.rl.config import EVALUATION_SEEDS

        cfg = self.config
        if cfg.robot == "ros":
            from wmpo_core.robot_loop import screen_stage

            return screen_stage(self, i, current, candidate, d)
        e = cfg.gate_episodes
        first = EVALUATION_SEEDS.seeds(e, offset=GATE_SEED_OFFSET + i * e)[0]
        log = d / "commands.log"
        cur = evaluate(current["package"], cfg.task, e, first, max_steps=cfg.max_steps, log=log,
                       temperature=cfg.temperature)
        cand = evaluate(candidate, cfg.task, e, first, max_steps=cfg.max_steps, log=log, temperature=cfg.temperature)
        decision = gate_decision(cur["per_episode"], cand["per_episode"], cfg.gate_alpha)
        print(f"    gate: {decision.reason}", flush=True)
        slim = ("policy", "success_rate", "ci95", "episodes", "successes", "seeds")
        return {"decision": asdict(decision), "current": {k: cur.get(k) for k in slim},
                "candidate": {k: cand.get(k) for k in slim}}

    def stage_publish(self, i: int, current: dict[str, Any], candidate: str, gate: dict[str, Any],
                      d: Path) -> dict[str, Any]:
        """Sign and push an accepted candidate and extend the version chain; a refused one changes nothing.

        On the real robot: pushed as a canary, promoted or rolled back by its episodes (wmpo_core.robot_loop)."""
        if self.config.robot == "ros":
            from wmpo_core.robot_loop import run_canary

            return run_canary(self, i, current, gate, candidate, d)
        if not gate["decision"]["accept"]:
            return {"pushed": False, "reason": gate["decision"]["reason"], "version": current["version"]}
        pkg = d / "package"
        log = d / "commands.log"
        if pkg.exists() and not (pkg / "signature.json").is_file():
            shutil.rmtree(pkg)  # an export cut short: do it again
        if not pkg.exists():
            run_wmpo("export", candidate, "--out", str(pkg), "--key", str(self.private_key),
                     "--parent", current["version"], log=log)
        from wmpo_core.registry.package import read_package_manifest

        version = read_package_manifest(pkg)["version"]
        installed, output = self._push(pkg, version, load=bool(self.config.load_node), log=log)
        self.versions.append({"version": version, "parent": current["version"], "package": str(pkg),
                              "installed": installed, "iteration": i, "gate": gate["decision"]["reason"],
                              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return {"pushed": True, "version": version, "parent": current["version"], "package": str(pkg),
                "installed": installed, "push_output": output}

    def _push(self, pkg: Path, version: str, load: bool, log: Path) -> tuple[str, str]:
        """`wmpo push` to the robot's policy folder (and its node when ``load``); (installed path, output)."""
        push = ["push", str(pkg), "--to", self.push_target, "--public-key", str(self.public_key)]
        push += ["--node", self.config.load_node] if load else ["--no-load"]
        proc = run_wmpo(*push, log=log, capture=True)
        target = self.push_target
        installed = f"{target}/{version}" if ":" in target else str(Path(target) / version)
        return installed, proc.stdout.strip()

    # -- driver --------------------------------------------------------------------------
    def run_iteration(self, i: int, stop_after: str | None = None) -> dict[str, Any] | None:
        """Run (or resume) iteration ``i``; None when stopped after ``stop_after`` on request."""
        it = self.iter_dir(i)
        # The version the iteration started from: fixed in its collect marker once collected.
        collect_marker = it / "collect" / MARKER
        start_version = read_json(collect_marker)["policy_version"] if collect_marker.is_file() else None
        current = next((e for e in self.versions.entries if e["version"] == start_version), None) \
            if start_version else self.versions.current
        if current is None:
            raise StageError(f"{collect_marker}: version {start_version} is not in {self.versions.path}")
        print(f"\niteration {i}: current policy {current['version']}", flush=True)
        results: dict[str, Any] = {"iteration": i, "policy_version": current["version"]}

        def step(name: str, fn: Callable[[Path], dict[str, Any]]) -> bool:
            results[name] = run_stage(it / name, name.replace("_", " "), fn)
            return stop_after == name

        if step("collect", lambda d: self.stage_collect(i, current, d)):
            return None
        if step("world_model", lambda d: self.stage_world_model(i, d)):
            return None
        if step("reward", lambda d: self.stage_reward(i, d)):
            return None
        if step("grpo", lambda d: self.stage_grpo(i, current, d)):
            return None
        candidate = results["grpo"]["candidate"]
        if step("gate", lambda d: self.stage_gate(i, current, candidate, d)):
            return None
        if step("publish", lambda d: self.stage_publish(i, current, candidate, results["gate"], d)):
            return None
        write_json_atomic(it / "metrics.json", results)
        return results

    def run(self, iterations: int, stop_after: str | None = None) -> list[dict[str, Any]]:
        """Run iterations ``0 .. iterations - 1``, skipping finished stages; the per-iteration results."""
        if self.config.robot == "ros":
            from wmpo_core.robot_loop import forbid_simulator

            forbid_simulator("`wmpo loop --robot ros`")
        self.prepare()
        done = []
        for i in range(iterations):
            r = self.run_iteration(i, stop_after=stop_after)
            if r is None:
                break
            done.append(r)
        return done


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo loop`."""
    parser.add_argument("--iterations", type=int, required=True, help="iterations to have finished (a rerun resumes)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (created, or resumed when it exists)")
    parser.add_argument("--policy", required=True, help="first policy package (signed or not)")
    parser.add_argument("--task", default="lift", help="simulated task (default: lift)")
    parser.add_argument("--robot", choices=("sim", "ros"), default="sim",
                        help="sim: simulated robot (default); ros: a real robot whose recorder writes to --episodes-from")
    parser.add_argument("--episodes-per-iter", type=int, default=8, help="episodes collected per iteration (default 8)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="policy sampling temperature for collection and the gate (0 = greedy; default 1.0)")
    parser.add_argument("--steps-after-success", type=int, default=8,
                        help="steps recorded past a success, for the reward model (default 8)")
    parser.add_argument("--collect-direct", action="store_true",
                        help="sim: collect straight from the simulator instead of through the ROS 2 graph (faster)")
    parser.add_argument("--episodes-from", help="ros: folder where the robot's recorder writes episode bags")
    parser.add_argument("--demos", help="episodes added to every training set (e.g. the demonstrations)")
    parser.add_argument("--world-model", help="world-model run the first iteration aligns from (default: pretrain)")
    parser.add_argument("--max-steps", type=int, help="episode horizon for collection and the gate (default: the task's)")
    parser.add_argument("--wm-config", help="JSON WorldModelTrainConfig for train-world-model")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig for train-reward")
    parser.add_argument("--grpo-config", help="JSON WMPOConfig for grpo")
    parser.add_argument("--wm-steps", type=int, help="world-model steps per iteration")
    parser.add_argument("--reward-steps", type=int, help="reward-model steps per iteration")
    parser.add_argument("--grpo-iterations", type=int, help="GRPO iterations per loop iteration")
    parser.add_argument("--gate-episodes", type=int, default=20, help="held-out start states of the gate (default 20)")
    parser.add_argument("--gate-alpha", type=float, default=0.05,
                        help="significance of the one-sided paired sign test of the gate (default 0.05; 1 = any gain)")
    parser.add_argument("--key", help="Ed25519 private key PEM (default: a key pair made in RUN/keys)")
    parser.add_argument("--push-to", help="robot policy folder, DIR or HOST:DIR (default: RUN/robot/policies)")
    parser.add_argument("--load-node", help="policy node asked to load each pushed version (e.g. /policy); its "
                        "policy_root parameter must be the --push-to folder (docs/security.md)")
    parser.add_argument("--collect-timeout", type=float, default=3600.0, help="ros: seconds to wait for episodes")
    parser.add_argument("--no-screen", dest="screen", action="store_false",
                        help="ros: skip the imagination screen; every candidate goes to the canary (e.g. when the "
                        "imagined reward's AUC is near 0.5)")
    parser.add_argument("--screen-starts", type=int, default=4,
                        help="ros: held-out episodes whose first frames start the imagination screen (default 4)")
    parser.add_argument("--canary-odds-ratio", type=float, default=3.0,
                        help="ros: effect size the canary test is built for (default 3: 50%% vs 25%% or 75%% success)")
    parser.add_argument("--canary-alpha", type=float, default=0.05,
                        help="ros: bound on false promote and on false rollback at that effect size (default 0.05)")
    parser.add_argument("--canary-max-pairs", type=int, default=30,
                        help="ros: most canary/current episode pairs per decision (default 30 = 60 episodes)")
    parser.add_argument("--stop-after", choices=ITERATION_STAGES,
                        help="stop after this stage of the first unfinished iteration (a rerun continues)")


def config_from_args(args: argparse.Namespace) -> LoopConfig:
    """LoopConfig of the command line."""
    names = {f.name for f in fields(LoopConfig)}
    values = {k: getattr(args, k) for k in names if hasattr(args, k)}
    values["out"] = str(Path(args.out).resolve())
    values["collect_timeout_s"] = args.collect_timeout
    for k in ("policy", "demos", "world_model", "wm_config", "reward_config", "grpo_config", "key"):
        if values.get(k):
            values[k] = str(Path(values[k]).resolve())
    return LoopConfig(**values)


def main(args: argparse.Namespace) -> int:
    """Run or resume the loop; 1 with the failing stage's message."""
    if args.iterations < 1:
        print("wmpo loop: --iterations must be >= 1", file=sys.stderr)
        return 2
    loop = Loop(config_from_args(args))
    try:
        results = loop.run(args.iterations, stop_after=args.stop_after)
    except (StageError, OSError, ValueError) as exc:
        print(f"wmpo loop: {exc}", file=sys.stderr)
        return 1
    for r in results:
        pub = r["publish"]
        print(f"iteration {r['iteration']}: {r['gate']['decision']['reason']}; "
              + (f"pushed {pub['version']}" if pub["pushed"] else f"kept {pub['version']}"))
    print(f"wmpo loop: {len(results)} iteration(s) finished; version chain in {loop.versions.path}; "
          f"current version {loop.versions.current['version']}")
    return 0


# ============================================================================ report
def report_rows(run_dir: Path, episodes: int, seed_offset: int = 0, temperature: float | None = None,
                log: Path | None = None) -> list[dict[str, Any]]:
    """Every policy of a loop run on the same ``episodes`` held-out start states.

    One row for the initial version, then per finished iteration one for GRPO's candidate
    and one for the version the robot ran after the gate. The start states are
    :data:`~wmpo_core.rl.config.EVALUATION_SEEDS` from ``seed_offset`` (0: the results
    table's; the gate draws from offset 50000 on, so the two never share a state). Each
    package is evaluated once; results are kept in ``RUN/report/`` and reused.
    """
    from wmpo_core.rl.config import EVALUATION_SEEDS

    stored = read_json(run_dir / "loop.json")
    chain = VersionChain(run_dir / "versions.json")
    if not chain.entries:
        raise StageError(f"{run_dir}: no version chain (versions.json); is this a `wmpo loop` run?")
    temp = stored.get("temperature", 0.0) if temperature is None else temperature
    first = EVALUATION_SEEDS.seeds(episodes, offset=seed_offset)[0]
    cache = run_dir / "report"

    def score(package: str, version: str) -> dict[str, Any]:
        path = cache / f"{version}_seed{first}_n{episodes}_t{temp:g}.json"
        if path.is_file():
            return read_json(path)
        result = evaluate(package, stored["task"], episodes, first, max_steps=stored.get("max_steps"), log=log,
                          temperature=temp)
        lengths = [r["length"] for r in result["per_episode"] if r["success"]]
        keep = {k: result[k] for k in ("success_rate", "ci95", "episodes", "successes")}
        keep["mean_success_length"] = sum(lengths) / len(lengths) if lengths else None
        keep["per_episode_success"] = [bool(r["success"]) for r in result["per_episode"]]
        write_json_atomic(path, keep)
        return keep

    by_version = {e["version"]: e for e in chain.entries}
    initial = chain.entries[0]
    rows = [{"iteration": None, "role": "initial", "version": initial["version"], "pushed": None,
             **score(initial["package"], initial["version"])}]
    i = 0
    while (run_dir / f"iter_{i:03d}" / "publish" / MARKER).is_file():
        it = run_dir / f"iter_{i:03d}"
        grpo, gate, publish = (read_json(it / s / MARKER) for s in ("grpo", "gate", "publish"))
        cand_version = grpo.get("version") or f"iter{i}-candidate"
        rows.append({"iteration": i, "role": "candidate", "version": cand_version, "pushed": publish["pushed"],
                     "gate": gate["decision"]["reason"], **score(grpo["candidate"], cand_version)})
        robot = by_version.get(publish["version"])
        if robot is None:
            raise StageError(f"{it / 'publish' / MARKER}: version {publish['version']} is not in {chain.path}")
        rows.append({"iteration": i, "role": "robot after", "version": robot["version"], "pushed": publish["pushed"],
                     **score(robot["package"], robot["version"])})
        i += 1
    for r in rows:
        r["seeds"] = [first, first + episodes - 1]
        r["temperature"] = temp
    return rows


def configure_loop_report(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo loop-report`."""
    parser.add_argument("--out", type=Path, required=True, help="run directory of `wmpo loop`")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per policy (default 100)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="offset in the evaluation seed range (default 0: the start states of `wmpo compare`)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print one JSON row per policy")


def main_loop_report(args: argparse.Namespace) -> int:
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
