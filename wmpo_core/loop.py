"""`wmpo loop`: lifelong learning on one robot: collect -> align -> improve -> gate -> push, repeated.

Iteration ``i`` of a run directory ``RUN``:

1. **collect**: ``M`` episodes with the current policy version. On the simulated robot they
   go through the ROS 2 graph (`wmpo record --sim --policy PKG`), or, with
   ``--collect-direct``, straight from the simulator into the same bag format (no ROS,
   several times faster). On the real robot (``--robot ros``) an operator records them
   with the running graph; the loop waits until ``M`` new complete episodes of the current
   version appear in ``--episodes-from``.
   The episodes so far (``--demos`` and every iteration's collection) are then linked once
   into ``RUN/iter_<i>/data/episodes``, the training data of the next three stages.
2. **world_model**: behavior alignment: `wmpo train-world-model --init` the previous
   iteration's world model (the first iteration starts from ``--world-model`` or pretrains
   from scratch with the recipe's config, on all episodes so far) on the episodes the loop collected so
   far, and ``--demos`` too with the recipe's ``align_on: "all"``.
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

With ``--candidates DIR`` the loop trains no policy: iteration ``i`` takes the ``i``-th package
of ``DIR`` (by folder name; e.g. candidates trained on a workstation) where GRPO's would be, and
trains the world model and reward only when the robot's imagination screen needs them. The loop
is then the deployment's decider: gate (or screen and canary), push, watch.

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

The stages are the pipeline's steps (wmpo_core.pipeline.steps), with the task's recipe
(wmpo_core.pipeline.recipe: world-model, reward and GRPO configs, camera, reward training data;
``--recipe`` replaces it, ``--wm-config`` / ``--reward-config`` / ``--grpo-config`` single fields),
the same definitions `wmpo demo` and `wmpo compare` run.

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
import threading
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The pipeline's names, re-exported: `wmpo loop` was their home before wmpo_core.pipeline.
from wmpo_core.io_utils import StageError, read_json, write_json_atomic  # noqa: F401
from wmpo_core.pipeline.recipe import Recipe, recipe_from_args
from wmpo_core.pipeline.runner import (  # noqa: F401
    MARKER,
    Step,
    last_json_line,
    run_stage,
    run_step,
    run_wmpo,
    stage_done,
    wmpo_command,
)
from wmpo_core.pipeline.steps import (  # noqa: F401
    Collection,
    GateDecision,
    collect,
    data_dir,
    evaluate,
    export_package,
    gate_decision,
    gate_in_sim,
    grpo_step,
    link_episodes,
    link_step,
    list_complete_episodes,
    make_keys,
    public_key_of,
    push_package,
    record_in_sim,
    record_through_ros,
    reward_step,
    world_model_step,
)
from wmpo_core.pipeline.versions import VersionChain
from wmpo_core.stats import sign_test_p_value  # noqa: F401

ITERATION_STAGES = ("collect", "world_model", "reward", "grpo", "gate", "publish")
# Offsets inside the shared seed ranges (wmpo_core.rl.config) that keep the loop's start states
# apart from `wmpo demo`'s, which start at offset 0 of each range.
COLLECT_SEED_OFFSET = 50_000
GATE_SEED_OFFSET = 50_000


# ============================================================================ candidates trained elsewhere
def candidate_packages(folder: Path) -> list[Path]:
    """The policy packages in ``folder`` (sub-folders holding a ``manifest.json``), sorted by name."""
    if not folder.is_dir():
        raise StageError(f"--candidates {folder}: " + ("not a folder" if folder.exists() else "does not exist"))
    found = sorted((p for p in folder.iterdir() if p.is_dir() and (p / "manifest.json").is_file()),
                   key=lambda p: p.name)
    if not found:
        raise StageError(f"--candidates {folder}: no policy package in it (a package is a folder with a "
                         "manifest.json, e.g. what `wmpo export` writes)")
    return found


def candidate_step(folder: Path, package: Path, source: Path, chain: VersionChain) -> Step:
    """The GRPO step's place when candidates come from a folder: check the package's files and take it.

    A version the run already has (pushed, or decided about as a candidate) is refused: pushing it
    again would make it its own parent, and a decision about it was already made."""
    def take(d: Path) -> dict[str, Any]:
        from wmpo_core.registry.package import PackageError, verify_package_contents

        try:
            manifest = verify_package_contents(package)
        except (PackageError, OSError, ValueError) as exc:
            raise StageError(f"candidate {package}: {exc}") from None
        version = manifest.get("version")
        if any(e["version"] == version for e in chain.entries):
            raise StageError(f"candidate {package}: version {version} is already in {chain.path}; a candidate must "
                             "be a new version")
        decided = [dec for dec in chain.decisions if dec.get("candidate") == version]
        if decided:
            raise StageError(f"candidate {package}: version {version} was already decided about (iteration "
                             f"{decided[-1].get('iteration')}: {decided[-1].get('verdict')}); give a new version")
        print(f"    candidate {version} from {source} (trained elsewhere; no GRPO here)", flush=True)
        return {"candidate": str(package), "version": version, "parent": manifest.get("parent"),
                "source": f"candidates folder {source}"}

    return Step("grpo", f"candidate from {source}", folder, take, inputs={"package": package},
                outputs=("candidate", "version", "parent", "source"))


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
    # Candidates trained elsewhere (e.g. on a workstation): iteration i takes the i-th package of this folder
    # (by name) instead of training one with GRPO; the loop then only decides (gate / screen, canary, watch).
    candidates: str | None = None
    max_steps: int | None = None
    wm_config: str | None = None
    reward_config: str | None = None
    grpo_config: str | None = None
    wm_steps: int | None = None
    reward_steps: int | None = None
    grpo_iterations: int | None = None
    recipe: str | None = None  # task recipe JSON (default: wmpo_core/pipeline/recipes/<task>.json)
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
    # ros only: the live watch of a promoted version (wmpo_core.robot_loop.LiveWatch, wmpo_core.canary.watch).
    watch: bool = True
    watch_threshold: float = 5.0
    # Settings that may differ between a run and its resumption.
    RESUMABLE: tuple[str, ...] = field(default=("out", "collect_timeout_s", "load_node", "watch"), repr=False)

    def settings(self) -> dict[str, Any]:
        """The stored settings (everything but the RESUMABLE list itself)."""
        data = asdict(self)
        data.pop("RESUMABLE")
        return data


def config_default(name: str) -> Any:
    """The LoopConfig default of ``name``: the command line's defaults are these, written once."""
    f = next(f for f in fields(LoopConfig) if f.name == name)
    if f.default is MISSING:
        raise KeyError(f"LoopConfig.{name} has no default")
    return f.default


class Loop:
    """One lifelong-learning run in ``config.out``; :meth:`run` performs iterations until ``iterations``."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.run_dir = Path(config.out)
        self.versions = VersionChain(self.run_dir / "versions.json")
        # Robot mode: held by a canary while it switches the policy node, taken by the live watch to roll back.
        self.node_lock = threading.Lock()

    @property
    def recipe(self) -> Recipe:
        """The task's recipe with this run's --recipe / --wm-config / --reward-config / --grpo-config applied."""
        return recipe_from_args(self.config).require_one_round(
            "loop", "each iteration collects, aligns, retrains the reward and runs GRPO: the iterations are its rounds")

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
            make_keys(self.run_dir / "keys")
        if not self.versions.entries:
            # The robot's policy node loads only packages signed by a key it trusts: sign a copy of the first one.
            pkg = self.run_dir / "initial" / "package"
            log = self.run_dir / "initial" / "commands.log"
            manifest = export_package(cfg.policy, pkg, self.private_key, log=log)
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
            from wmpo_core.robot_loop import canary_rule, watch_rule

            if cfg.screen_starts < 1:
                raise StageError(f"--screen-starts: expected >= 1, got {cfg.screen_starts}")
            try:
                canary_rule(cfg)
                watch_rule(cfg)
            except ValueError as exc:
                raise StageError(f"--canary-* / --watch-threshold: {exc}") from None
        if cfg.episodes_per_iter < 1 or cfg.gate_episodes < 1:
            raise StageError("--episodes-per-iter and --gate-episodes must be positive")
        if not 0 < cfg.gate_alpha <= 1:
            raise StageError(f"--gate-alpha: expected a value in (0, 1], got {cfg.gate_alpha}")
        for name in ("policy", "demos", "world_model", "wm_config", "reward_config", "grpo_config", "key", "recipe",
                     "candidates"):
            value = getattr(cfg, name)
            if value and not Path(value).exists():
                raise StageError(f"--{name.replace('_', '-')} {value}: does not exist")
        try:
            self.recipe  # noqa: B018 - read for its errors
        except ValueError as exc:
            raise StageError(str(exc)) from None

    @property
    def private_key(self) -> Path:
        """Signing key of the run."""
        return Path(self.config.key) if self.config.key else self.run_dir / "keys" / "wmpo_policy_signing.pem"

    @property
    def public_key(self) -> Path:
        """Public key the pushed packages are verified with."""
        return public_key_of(self.private_key)

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

    # -- the iteration's steps -----------------------------------------------------------
    def plan(self, i: int, current: dict[str, Any]) -> list[Step]:
        """The steps of iteration ``i`` from ``current`` (nothing runs): collect, link data, world
        model, reward, GRPO, gate, publish; each in ``RUN/iter_<i>/<name>`` with its marker.

        With ``candidates`` the GRPO step takes the folder's i-th package instead, and the world model
        and reward are trained only when the robot's imagination screen needs them."""
        cfg, it, recipe = self.config, self.iter_dir(i), self.recipe
        collected = [self.iter_dir(j) / "collect" / "episodes" for j in range(i + 1)]
        data = data_dir(it / "data")
        init = (self.iter_dir(i - 1) / "world_model" / "run") if i > 0 else (
            Path(cfg.world_model) if cfg.world_model else None)
        world_model = it / "world_model" / "run"
        # pretrained here on every episode; aligned on the policy's own (and the demonstrations: recipe align_on)
        wm_episodes = [data] if init is None else recipe.alignment_episodes(
            collected, [Path(cfg.demos)] if cfg.demos else [])
        steps = [
            Step("collect", "collect", it / "collect", lambda d: self.stage_collect(i, current, d),
                 inputs={"policy_version": current["version"], "episodes": cfg.episodes_per_iter},
                 outputs=("policy_version", "episodes_dir", "episodes", "successes")),
            link_step(it / "data", ([Path(cfg.demos)] if cfg.demos else []) + collected),
        ]
        if not cfg.candidates or (cfg.robot == "ros" and cfg.screen):
            steps += [
                world_model_step(it / "world_model", wm_episodes, recipe, init=init, steps=cfg.wm_steps),
                reward_step(it / "reward", data, world_model, recipe, steps=cfg.reward_steps,
                            # calibrated on the policy's own episodes: GRPO scores imagined trajectories of the policy
                            calibrate_on=collected),
            ]
        if cfg.candidates:
            marker = it / "grpo" / MARKER
            candidate = (read_json(marker)["candidate"] if marker.is_file()
                         else str(candidate_packages(Path(cfg.candidates))[i]))
            steps.append(candidate_step(it / "grpo", Path(candidate), Path(cfg.candidates), self.versions))
        else:
            candidate = str(it / "grpo" / "run" / "policy")
            # budget: the real trajectories behind this iteration's models, as linked
            steps.append(grpo_step(it / "grpo", current["package"], world_model, it / "reward", [data], recipe,
                                   budget=lambda: read_json(it / "data" / MARKER)["episodes"],
                                   iterations=cfg.grpo_iterations))
        return [
            *steps,
            Step("gate", "gate", it / "gate", lambda d: self.stage_gate(i, current, candidate, d),
                 inputs={"current": current["version"], "candidate": candidate}, outputs=("decision",)),
            Step("publish", "publish", it / "publish",
                 lambda d: self.stage_publish(i, current, candidate, read_json(it / "gate" / MARKER), d),
                 inputs={"candidate": candidate, "gate": it / "gate"}, outputs=("pushed", "version")),
        ]

    def collection(self, i: int, current: dict[str, Any]) -> Collection:
        """What iteration ``i`` collects on the simulated robot: ``episodes_per_iter`` episodes of the
        current version from fresh rollout seeds, with the recipe's cameras."""
        from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS

        cfg = self.config
        m = cfg.episodes_per_iter
        first = POLICY_ROLLOUT_SEEDS.seeds(m, offset=COLLECT_SEED_OFFSET + i * m)[0]
        return Collection(self.local_package(current), cfg.task, m, first, direct=cfg.collect_direct,
                          max_steps=cfg.max_steps, temperature=cfg.temperature,
                          steps_after_success=cfg.steps_after_success, public_key=self.public_key,
                          cameras=self.recipe.cameras)

    def stage_collect(self, i: int, current: dict[str, Any], d: Path) -> dict[str, Any]:
        """Collect ``episodes_per_iter`` episodes with the current version into ``d/episodes``."""
        cfg = self.config
        m = cfg.episodes_per_iter
        if cfg.robot == "ros":
            from wmpo_core.robot_loop import wait_for_episodes

            out = d / "episodes"  # the first M complete episodes of the version that no stage took yet
            wait_for_episodes(self, i, current["version"], m, out, "training episodes; record them with the robot's "
                              "recorder")
            rows = list_complete_episodes(out)
            if not rows:
                raise StageError(f"{out}: no complete episode was collected")
            successes = sum(1 for r in rows if r.get("success"))
            return {"mode": f"real robot, episodes from {cfg.episodes_from}", "policy_version": current["version"],
                    "episodes_dir": str(out), "episodes": len(rows), "successes": successes,
                    "success_rate": successes / len(rows), "seeds": [r.get("seed") for r in rows]}
        result = collect(self.collection(i, current), d)
        mode = "simulator, direct (no ROS graph)" if cfg.collect_direct else "simulated robot through the ROS 2 graph"
        return {"mode": mode, "policy_version": current["version"], **result}

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
        return gate_in_sim(current["package"], candidate, cfg.task, e, first, cfg.gate_alpha, max_steps=cfg.max_steps,
                           temperature=cfg.temperature, log=d / "commands.log")

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
        version = export_package(candidate, pkg, self.private_key, parent=current["version"], log=log)["version"]
        installed, output = self._push(pkg, version, load=bool(self.config.load_node), log=log)
        self.versions.append({"version": version, "parent": current["version"], "package": str(pkg),
                              "installed": installed, "iteration": i, "gate": gate["decision"]["reason"],
                              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return {"pushed": True, "version": version, "parent": current["version"], "package": str(pkg),
                "installed": installed, "push_output": output}

    def _push(self, pkg: Path, version: str, load: bool, log: Path) -> tuple[str, str]:
        """`wmpo push` to the robot's policy folder (and its node when ``load``); (installed path, output)."""
        return push_package(pkg, self.push_target, self.public_key, node=self.config.load_node if load else None,
                            log=log)

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
        for step in self.plan(i, current):
            results[step.name] = run_stage(step.folder, step.name.replace("_", " "), step.run)
            if stop_after == step.name:
                return None
        write_json_atomic(it / "metrics.json", results)
        return results

    def run(self, iterations: int, stop_after: str | None = None) -> list[dict[str, Any]]:
        """Run iterations ``0 .. iterations - 1``, skipping finished stages; the per-iteration results."""
        if self.config.robot == "ros":
            from wmpo_core.robot_loop import forbid_simulator

            forbid_simulator("`wmpo loop --robot ros`")
        if self.config.candidates:  # before anything is written
            have = len(candidate_packages(Path(self.config.candidates)))
            if have < iterations:
                raise StageError(f"--candidates {self.config.candidates}: {have} package(s) for {iterations} "
                                 "iterations; iteration i takes the i-th package by name")
        self.prepare()
        live = None
        if self.config.robot == "ros" and self.config.watch:
            from wmpo_core.robot_loop import LiveWatch

            live = LiveWatch(self).start()
        done = []
        try:
            for i in range(iterations):
                r = self.run_iteration(i, stop_after=stop_after)
                if r is None:
                    break
                done.append(r)
        finally:
            if live is not None:
                live.stop()
        return done


def config_from_args(args: argparse.Namespace) -> LoopConfig:
    """LoopConfig of the command line."""
    names = {f.name for f in fields(LoopConfig)}
    values = {k: getattr(args, k) for k in names if hasattr(args, k)}
    values["out"] = str(Path(args.out).resolve())
    values["collect_timeout_s"] = args.collect_timeout
    for k in ("policy", "demos", "world_model", "wm_config", "reward_config", "grpo_config", "key", "recipe",
              "candidates"):
        if values.get(k):
            values[k] = str(Path(values[k]).resolve())
    return LoopConfig(**values)


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
