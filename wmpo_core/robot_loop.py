"""`wmpo loop --robot ros`: decide from the robot's own episodes, never from a simulator.

On a real robot there is no simulator of the task, so in this mode the loop's gate and
publish stages are replaced by:

1. **imagination screen** (:func:`imagination_screen`, the gate stage): the candidate and the
   current policy are rolled out in the iteration's aligned world model from real first
   frames the loop did not train on (``--screen-starts`` episodes of the current version
   recorded after collection), with identical random streams per trajectory, scored by the
   reward model, and compared with the paired sign test of the simulated gate
   (:func:`wmpo_core.pipeline.steps.gate_decision`). A candidate that does not beat the current policy
   there costs no robot time. The imagined reward's measured AUC is printed beside it.
2. **canary** (:func:`run_canary`, the publish stage): an accepted candidate is signed and
   pushed to the robot's policy node as a canary. The loop then has the node alternate
   between canary and current version between episodes (``~/load_policy`` of the canary,
   ``~/rollback`` to the current one), reads every episode the robot's recorder writes
   (each bag carries the version that ran it) with its success label, and applies the
   sequential test of :mod:`wmpo_core.canary` until it says **promote** (the node keeps the
   canary; it becomes the chain's head) or **roll back** (the node's rollback restores the
   current version; the canary is recorded as refused with its numbers). The node's active
   version is read back after every decision; a mismatch stops the loop.

3. **live watch** (:class:`LiveWatch`, a thread of the loop process, and `wmpo loop-watch` for the
   time after the loop): a version the canary promoted keeps being compared, episode by episode,
   with the version it replaced (:func:`wmpo_core.canary.watch`: a CUSUM against the previous
   version's labelled episodes). When it falls below by the effect size the watch calls the
   node's ``~/rollback``, reads the node's version back, records the decision and makes the
   previous version the chain's head again. It pauses while a canary runs (the canary's own
   test watches then) and a candidate trained from a rolled-back version is not pushed. Its
   state and every decision are published on ``/diagnostics`` (status ``wmpo_loop: versions``,
   once a second).

Labels, in order of trust (:func:`episode_outcome`): an operator's label file (``wmpo
label``), the recorder's label (``~/label``, stored in the bag's metadata), the success topic
recorded in the bag (``/wmpo/success`` true at any time), and last the reward model on the
real video (marked ``model``, with the model's F1 on real validation episodes).

Every decision (screen refusal, promotion, rollback) is appended to ``RUN/versions.json``
under ``decisions``; `wmpo loop-report` shows them for a robot run (:func:`robot_report_rows`).

The simulator guard (:func:`forbid_simulator`): in robot mode the loop process sets
``WMPO_NO_SIMULATOR``; every simulator entry point of the loop (`wmpo eval` of a policy,
recording in the simulator, the simulated-robot graph) then raises
:class:`SimulatorForbidden` before it starts anything. `wmpo loop-report` of a robot run
shows the decisions instead of evaluating in the simulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wmpo_core.canary import (
    CANARY,
    CONTINUE,
    CURRENT,
    PROMOTE,
    ROLL_BACK,
    CanaryRule,
    WatchRule,
    decide,
    watch,
)
from wmpo_core.io_utils import StageError, read_json, write_json_atomic
from wmpo_core.pipeline.guard import (  # noqa: F401 - the guard's names, re-exported
    SIMULATOR_ENV,
    SimulatorForbidden,
    allow_simulator,
    check_simulator,
    forbid_simulator,
)
from wmpo_core.pipeline.runner import MARKER
from wmpo_core.pipeline.steps import export_package, gate_decision

# ``loop`` arguments below are a wmpo_core.loop.Loop (which imports this module; this one does not import it).
Loop = Any
SCREEN_SEED = 1_000_003  # imagination seeds of the screen, apart from GRPO's (seeded from its config)
POLL_S = 1.0


# ============================================================================ labels
def _success_topic_flag(path: Path) -> bool | None:
    """True when the bag's success topic was ever true, False when it was recorded and never true, None without it."""
    from wmpo_core.data import topics as T
    from wmpo_core.data.bag import bag_summary, iter_messages

    if not bag_summary(path).topic_counts.get(T.SUCCESS):
        return None
    return any(bool(msg.data) for _, _, msg in iter_messages(path, [T.SUCCESS]))


class Labeller:
    """Success of a recorded episode from the most trusted source it has (module docstring)."""

    def __init__(self, reward_run: str | None = None) -> None:
        self.reward_run = reward_run
        self._model: Any = None
        self._f1: float | None = None
        self._cache: dict[str, dict[str, Any]] = {}  # reward-model labels: computed once per episode

    def model_f1(self) -> float | None:
        """The reward model's F1 on its real validation episodes (training.json), None when not recorded."""
        if self.reward_run is None:
            return None
        path = Path(self.reward_run) / "training.json"
        if path.is_file():
            data = read_json(path)
            value = data.get("val_f1_real", data.get("val_f1"))
            return None if value is None else float(value)
        return None

    def __call__(self, path: Path) -> dict[str, Any]:
        """``{"success": bool | None, "source": ..., ["f1": ...]}`` for the episode bag at ``path``."""
        from wmpo_core.data.bag import inspect_episode

        _, meta, _ = inspect_episode(path)
        label = meta.extra.get("label")
        if isinstance(label, dict):
            return {"success": bool(label["success"]), "source": "operator label file"}
        if meta.success is not None:  # no label file: the value is the recorder's ~/label
            return {"success": bool(meta.success), "source": "recorder label"}
        flag = _success_topic_flag(path)
        if flag is not None:
            return {"success": flag, "source": "success topic"}
        return self._by_model(path, meta.episode_id)

    def _by_model(self, path: Path, episode_id: str) -> dict[str, Any]:
        if episode_id in self._cache:
            return self._cache[episode_id]
        if self.reward_run is None:
            return {"success": None, "source": "none"}
        from wmpo_core.data.frames import load_episode_frames
        from wmpo_core.reward.model import RewardModel

        if self._model is None:
            self._model = RewardModel.from_pretrained(self.reward_run)
            self._f1 = self.model_f1()
        s = self._model.settings
        frames = load_episode_frames(path, s.camera, s.image_size).frames
        success = bool(self._model.predict_success([frames])[0])
        self._cache[episode_id] = {"success": success, "source": "model", "f1": self._f1}
        return self._cache[episode_id]


def episode_outcome(path: str | os.PathLike[str], reward_run: str | None = None) -> dict[str, Any]:
    """Label of one episode (see :class:`Labeller`)."""
    return Labeller(reward_run)(Path(path))


# ============================================================================ the robot's episodes
_RAN: dict[tuple[str, int], tuple[str, ...]] = {}  # (bag folder, mtime ns) -> versions its topic recorded
_NOT_COUNTED: set[str] = set()  # episodes already said to count for no version


def _not_counted(episode_id: str, why: str) -> None:
    """Say once that an episode counts for no version, and why (the loop polls every second)."""
    if episode_id not in _NOT_COUNTED:
        _NOT_COUNTED.add(episode_id)
        print(f"    episode {episode_id}: {why}; not counted for any version", flush=True)


def versions_recorded(path: Path) -> tuple[str, ...]:
    """The distinct policy versions the bag's ``/wmpo/policy_version`` topic recorded, in order.

    A finished bag does not change (a label is written beside it, which changes the folder's mtime),
    so the answer is cached per folder and mtime: the loop polls the recorder's folder every second.
    """
    from wmpo_core.data import topics as T
    from wmpo_core.data.bag import iter_messages

    key = (str(path), path.stat().st_mtime_ns)
    if key not in _RAN:
        seen: list[str] = []
        for _, _, msg in iter_messages(path, topics=[T.POLICY_VERSION]):
            if msg.data and msg.data not in seen:
                seen.append(msg.data)
        _RAN[key] = tuple(seen)
    return _RAN[key]


def _episodes_in(source: Path) -> tuple[list[dict[str, Any]], bool]:
    """(complete episodes of ``source`` with their bag start time, whether a bag is being recorded now).

    An episode during which the node switched version (its bag recorded more than one version on
    ``/wmpo/policy_version``) belongs to neither version: it is left out, and said so once.
    """
    from wmpo_core.data.bag import bag_summary
    from wmpo_core.data.episodes import STATUS_RECORDING, list_episodes

    rows, recording = [], False
    for e in list_episodes(source) if source.is_dir() else []:
        if isinstance(e, Exception):
            continue
        if e.status == STATUS_RECORDING:
            recording = True
        if e.status != "complete":
            continue
        try:
            ran = versions_recorded(e.path)
        except Exception as exc:  # noqa: BLE001 - any reader error: the episode cannot be attributed
            _not_counted(e.episode_id, f"its policy versions cannot be read ({exc})")
            continue
        if len(set(ran) | ({e.policy_version} - {""})) > 1:
            _not_counted(e.episode_id, f"the node switched version during it ({' -> '.join(ran)})")
            continue
        rows.append({"episode_id": e.episode_id, "policy_version": e.policy_version, "path": str(e.path),
                     "start_ns": bag_summary(e.path).start_ns})
    rows.sort(key=lambda r: r["start_ns"])
    return rows, recording


def used_episode_ids(loop: Loop, upto: int) -> set[str]:
    """Episodes a stage of iterations ``0 .. upto`` already took (collected, held out, canary)."""
    used: set[str] = set()
    for j in range(upto + 1):
        it = loop.iter_dir(j)
        for sub in ("collect/episodes", "gate/held_out", "publish/canary_episodes"):
            folder = it / sub
            if folder.is_dir():
                used.update(p.name for p in folder.iterdir())
    return used


def _link(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        link = out / r["episode_id"]
        if not link.exists():
            link.symlink_to(Path(r["path"]).resolve(), target_is_directory=True)


def wait_for_episodes(loop: Loop, i: int, version: str, count: int, out: Path, what: str) -> list[dict[str, Any]]:
    """Link ``count`` complete episodes of ``version`` no stage used yet into ``out``; waits for the recorder."""
    cfg = loop.config
    source = Path(cfg.episodes_from)
    have = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if len(have) >= count:
        return [{"episode_id": n, "path": str((out / n).resolve())} for n in have[:count]]
    used = used_episode_ids(loop, i) - set(have)
    print(f"    waiting for {count} complete episodes of {version} in {source} ({what})", flush=True)
    deadline = time.monotonic() + cfg.collect_timeout_s
    while True:
        rows = [r for r in _episodes_in(source)[0] if r["policy_version"] == version and r["episode_id"] not in used]
        if len(rows) >= count:
            break
        if time.monotonic() > deadline:
            raise StageError(f"{source}: only {len(rows)} of {count} episodes of {version} ({what}) after "
                             f"{cfg.collect_timeout_s:.0f} s")
        time.sleep(POLL_S)
    _link(rows[:count], out)
    return rows[:count]


# ============================================================================ imagination screen
def imagination_screen(current_pkg: str, candidate_pkg: str, world_model_run: str, reward_run: str | Any,
                       starts_dir: Path, *, group_size: int, horizon: int, temperature: float,
                       alpha: float) -> dict[str, Any]:
    """Both policies imagined from the same real first frames with the same seeds; the paired gate rule on the results.

    Trajectory ``g`` of start ``s`` draws from seed ``SCREEN_SEED + s * G + g`` for both policies,
    so the pair differs only by the policy. ``reward_run``: a reward-model run directory, or any
    :class:`~wmpo_core.rl.rollouts.TrajectoryReward`.
    """
    from wmpo_core.policy.loading import load_package
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.rl.rollouts import VideoReward, imagine_trajectories, load_start_states
    from wmpo_core.world_model.model import WorldModel

    world_model = WorldModel.from_pretrained(world_model_run)
    reward = VideoReward(RewardModel.from_pretrained(reward_run)) if isinstance(reward_run, str | Path) else reward_run
    starts = load_start_states(starts_dir, world_model.settings.camera, world_model.settings.image_size)
    results: dict[str, list[dict[str, Any]]] = {}
    for role, pkg in (("current", current_pkg), ("candidate", candidate_pkg)):
        policy = load_package(pkg)
        batch = imagine_trajectories(world_model, policy, reward, starts, list(range(len(starts))), horizon,
                                     group_size, temperature, SCREEN_SEED)
        results[role] = [{"seed": k, "success": bool(r)} for k, r in enumerate(batch.reward.tolist())]
    decision = gate_decision(results["current"], results["candidate"], alpha)
    return {"decision": decision, "starts": starts.ids, "group_size": group_size, "horizon": horizon,
            "temperature": temperature,
            "outcomes": {role: [r["success"] for r in rows] for role, rows in results.items()}}


def screen_stage(loop: Loop, i: int, current: dict[str, Any], candidate: str, d: Path) -> dict[str, Any]:
    """The gate stage in robot mode: held-out real first frames, then the imagination screen."""
    from dataclasses import asdict

    from wmpo_core.rl.config import WMPOConfig, load_config

    cfg = loop.config
    it = loop.iter_dir(i)
    if not cfg.screen:
        reason = "imagination screen skipped (--no-screen): the canary decides"
        print(f"    gate: {reason}", flush=True)
        return {"decision": {"accept": True, "reason": reason, "imagined_reward_auc": None}, "screen": None}
    held_out = d / "held_out"
    wait_for_episodes(loop, i, current["version"], cfg.screen_starts, held_out,
                      "held-out start states of the imagination screen")
    reward = read_json(it / "reward" / MARKER)
    grpo_cfg = load_config(WMPOConfig, loop.recipe.grpo_config)
    screen = imagination_screen(loop.local_package(current), candidate, str(it / "world_model" / "run"),
                                reward["run"], held_out, group_size=grpo_cfg.grpo.group_size,
                                horizon=grpo_cfg.horizon, temperature=cfg.temperature, alpha=cfg.gate_alpha)
    decision = asdict(screen.pop("decision"))
    auc = reward.get("imagined_auc")
    weakness = (f"imagined reward AUC {auc:.2f}" if isinstance(auc, int | float)
                else "imagined reward AUC not measured (" + str(reward.get("calibration_skipped", "no calibration"))
                + ")")
    decision["reason"] = f"imagination screen: {decision['reason']} [{weakness}]"
    decision["imagined_reward_auc"] = auc
    print(f"    gate: {decision['reason']}", flush=True)
    if not decision["accept"]:
        loop.versions.record_decision({"iteration": i, "stage": "imagination screen", "verdict": "refused",
                                       "candidate": candidate, "current": current["version"],
                                       "reason": decision["reason"], "robot_episodes": 0, "at": _now()})
    return {"decision": decision, "screen": screen, "held_out": str(held_out)}


# ============================================================================ the policy node
@contextlib.contextmanager
def _ros_session() -> Iterator[tuple[Any, Any]]:
    """A private rclpy context with one short-lived node and its executor (the caller may run rclpy too)."""
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
    except ImportError as exc:
        raise StageError(f"--robot ros talks to the policy node and needs the ros extra (pip install 'wmpo[ros]'): "
                         f"{exc}") from None
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node(f"wmpo_loop_{secrets.token_hex(3)}", context=context, start_parameter_services=False,
                             enable_rosout=False)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _topic_of(node_name: str, relative: str) -> str:
    ns = node_name if node_name.startswith("/") else f"/{node_name}"
    ns = ns.rstrip("/").rsplit("/", 1)[0]
    return f"{ns}/{relative}"


def node_version(node_name: str, expected: str | None = None, timeout_s: float = 15.0) -> str | None:
    """The version the node publishes on its latched ``wmpo/policy_version`` (waits for ``expected`` when given)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    seen: list[str] = []
    with _ros_session() as (node, executor):
        qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST, depth=1)
        node.create_subscription(String, _topic_of(node_name, "wmpo/policy_version"),
                                 lambda m: seen.append(m.data), qos)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            if seen and (expected is None or seen[-1] == expected):
                break
    return seen[-1] if seen else None


def node_rollback(node_name: str, timeout_s: float = 30.0) -> str:
    """Call the node's ``~/rollback``; its message, or a StageError with the node's reason."""
    from std_srvs.srv import Trigger

    name = f"{node_name.rstrip('/')}/rollback"
    with _ros_session() as (node, executor):
        client = node.create_client(Trigger, name)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise StageError(f"{name}: service not available after {timeout_s:.0f} s (is the policy node running?)")
        future = client.call_async(Trigger.Request())
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not future.done() or future.result() is None:
            raise StageError(f"{name}: no answer within {timeout_s:.0f} s")
        response = future.result()
    if not response.success:
        raise StageError(f"{name}: rollback refused: {response.message}")
    return response.message


def node_load(node_name: str, installed: str) -> str:
    """Ask the node to load the package at ``installed`` (inside its policy root); StageError on a refusal."""
    from wmpo_core.registry.push import PolicyLoadError, request_policy_load

    try:
        return request_policy_load(node_name, installed)
    except PolicyLoadError as exc:
        raise StageError(str(exc)) from None


# ============================================================================ canary
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def canary_rule(cfg: Any) -> CanaryRule:
    """The loop's canary settings as a rule (alpha is used for both error bounds)."""
    return CanaryRule(odds_ratio=cfg.canary_odds_ratio, alpha=cfg.canary_alpha, beta=cfg.canary_alpha,
                      max_pairs=cfg.canary_max_pairs)


def run_canary(loop: Loop, i: int, current: dict[str, Any], gate: dict[str, Any], candidate: str,
               d: Path) -> dict[str, Any]:
    """The publish stage in robot mode: push the candidate as a canary, alternate, decide, promote or roll back."""
    if not gate["decision"]["accept"]:
        return {"pushed": False, "reason": gate["decision"]["reason"], "version": current["version"]}
    with loop.node_lock:  # the live watch pauses while a canary runs
        head = loop.versions.current["version"]
        if head != current["version"] and not (d / "canary.json").is_file():
            reason = (f"not pushed: the candidate was trained from {current['version']}, which the live watch rolled "
                      f"back to {head} meanwhile")
            loop.versions.record_decision({"iteration": i, "stage": "canary", "verdict": "not pushed",
                                           "candidate": candidate, "current": current["version"], "reason": reason,
                                           "robot_episodes": 0, "at": _now()})
            print(f"    canary: {reason}", flush=True)
            return {"pushed": False, "reason": reason, "version": head}
        return _run_canary(loop, i, current, gate, candidate, d)


def _run_canary(loop: Loop, i: int, current: dict[str, Any], gate: dict[str, Any], candidate: str,
                d: Path) -> dict[str, Any]:
    cfg = loop.config
    node = cfg.load_node
    log = d / "commands.log"
    pkg = d / "package"
    canary = export_package(candidate, pkg, loop.private_key, parent=current["version"], log=log)["version"]
    state_path = d / "canary.json"
    if state_path.is_file():
        state = read_json(state_path)
        installed = state["installed"]
        active = node_version(node, timeout_s=15.0)
        if active not in (canary, current["version"]):
            raise StageError(f"{node}: runs {active!r}, neither the canary {canary} nor the current version "
                             f"{current['version']}; put it back on {current['version']} and rerun")
    else:
        installed, output = loop._push(pkg, canary, load=True, log=log)
        state = {"canary": canary, "current": current["version"], "installed": installed,
                 "started_ns": time.time_ns(), "started_at": _now()}
        write_json_atomic(state_path, state)
        active = canary
        print(f"    canary {canary} pushed and loaded on {node}: {output.splitlines()[-1] if output else ''}", flush=True)
    rule = canary_rule(cfg)
    reward_marker = loop.iter_dir(i) / "reward" / MARKER  # absent when candidates come from a folder, unscreened
    labeller = Labeller(read_json(reward_marker).get("trained") if reward_marker.is_file() else None)
    source = Path(cfg.episodes_from)
    used = used_episode_ids(loop, i)
    role_of = {canary: CANARY, current["version"]: CURRENT}
    print(f"    canary: record episodes as usual; the loop switches {node} between {canary} (canary) and "
          f"{current['version']} (current) between episodes and decides after each pair "
          f"(at most {2 * rule.max_pairs} episodes)", flush=True)
    last_count, last_change = -1, time.monotonic()
    while True:
        episodes, recording = _episodes_in(source)
        rows = [r for r in episodes if r["policy_version"] in role_of and r["episode_id"] not in used
                and r["start_ns"] >= state["started_ns"]]
        for r in rows:
            r.update(labeller(Path(r["path"])))
        labelled = [r for r in rows if r["success"] is not None]
        decision = decide([(role_of[r["policy_version"]], r["success"]) for r in labelled], rule)
        if len(rows) != last_count:
            last_count, last_change = len(rows), time.monotonic()
            if rows:
                print(f"    canary: {decision.reason}", flush=True)
        if decision.verdict != CONTINUE:
            break
        want = canary if decision.next_version == CANARY else current["version"]
        if want != active and not recording:  # never switch under a running episode
            if want == canary:
                node_load(node, installed)
            else:
                node_rollback(node)
            active = want
            print(f"    canary: {node} now runs {want} ({decision.next_version}) for the next episode", flush=True)
        if time.monotonic() - last_change > cfg.collect_timeout_s:
            raise StageError(f"{source}: no new episode of {canary} or {current['version']} for "
                             f"{cfg.collect_timeout_s:.0f} s during the canary (rerun to continue it)")
        time.sleep(POLL_S)
    # The episodes the verdict rests on (pairs in the order run) become this stage's canary episodes.
    taken = {CANARY: decision.canary_episodes, CURRENT: decision.current_episodes}
    used_rows = []
    for r in labelled:
        role = role_of[r["policy_version"]]
        if taken[role] > 0:
            taken[role] -= 1
            used_rows.append(r)
    _link(used_rows, d / "canary_episodes")
    episodes_record = [{k: r.get(k) for k in ("episode_id", "policy_version", "success", "source", "f1")}
                       for r in used_rows]
    promote = decision.verdict == PROMOTE
    if promote and active != canary:
        node_load(node, installed)
    elif not promote and active == canary:
        node_rollback(node)
    expected = canary if promote else current["version"]
    after = node_version(node, expected=expected, timeout_s=30.0)
    if after != expected:
        raise StageError(f"{node}: after the canary decision ({decision.verdict}) the node runs {after!r}, "
                         f"expected {expected}")
    record = {"iteration": i, "stage": "canary", "verdict": "promoted" if promote else "rolled back",
              "candidate": canary, "current": current["version"], "reason": decision.reason,
              "robot_episodes": decision.canary_episodes + decision.current_episodes,
              "canary": {k: v for k, v in decision.to_dict().items() if k != "next_version"},
              "episodes": episodes_record, "node_version_after": after, "at": _now()}
    loop.versions.record_decision(record)
    print(f"    canary: {record['verdict']} {canary} after {record['robot_episodes']} robot episodes; {node} runs {after}",
          flush=True)
    if promote:
        loop.versions.append({"version": canary, "parent": current["version"], "package": str(pkg),
                              "installed": installed, "iteration": i, "gate": gate["decision"]["reason"],
                              "canary": decision.reason, "pushed_at": state["started_at"],
                              "promoted_at": record["at"], "promoted_ns": time.time_ns()})
    return {"pushed": promote, "version": expected, "canary_version": canary, "parent": current["version"],
            "package": str(pkg), "installed": installed, "reason": decision.reason, "canary": record}


# ============================================================================ live watch
DIAGNOSTIC_NAME = "wmpo_loop: versions"


def watch_rule(cfg: Any) -> WatchRule:
    """The loop's live-watch settings as a rule (the canary's effect size, the watch's own threshold)."""
    return WatchRule(odds_ratio=cfg.canary_odds_ratio, threshold=cfg.watch_threshold)


class LiveWatch:
    """The promoted version against the one it replaced, from the robot's labelled episodes (module docstring).

    :meth:`check` looks once (and rolls back on an alarm); :meth:`start` runs it every ``interval_s``
    in a daemon thread that also publishes the state on ``/diagnostics``; :meth:`stop` ends it.
    """

    def __init__(self, loop: Loop, interval_s: float = 5.0, publish: bool = True) -> None:
        self.loop = loop
        self.rule = watch_rule(loop.config)
        self.interval_s = interval_s
        self.publish = publish
        self.state: dict[str, Any] = {"watching": None, "message": "starting"}
        self.error: str | None = None
        self._labels: dict[str, tuple[float, dict[str, Any]]] = {}  # episode id -> (bag folder mtime, label)
        self._labeller: Labeller | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one look ------------------------------------------------------------------------------
    def _reward_run(self) -> str | None:
        """The newest iteration's reward model (labels of episodes with no operator, recorder or topic label)."""
        for it in sorted(self.loop.run_dir.glob("iter_*"), key=lambda p: int(p.name.split("_")[1]), reverse=True):
            marker = it / "reward" / MARKER
            if marker.is_file():
                return read_json(marker).get("trained")
        return None

    def _label(self, row: dict[str, Any]) -> dict[str, Any]:
        path = Path(row["path"])
        stamp = path.stat().st_mtime  # `wmpo label` writes beside the bag: a changed label changes the folder
        cached = self._labels.get(row["episode_id"])
        if cached and cached[0] == stamp:
            return cached[1]
        reward_run = self._reward_run()
        if self._labeller is None or self._labeller.reward_run != reward_run:
            self._labeller = Labeller(reward_run)
        label = self._labeller(path)
        self._labels[row["episode_id"]] = (stamp, label)
        return label

    def check(self) -> dict[str, Any] | None:
        """Look once; the rollback record when the watch rolled the head back, else None.

        Skipped (None) while a canary holds the node; a failed rollback raises StageError.
        """
        lock = self.loop.node_lock
        if not lock.acquire(blocking=False):
            self.state = {**self.state, "message": "paused: a canary is running"}
            return None
        try:
            return self._check()
        finally:
            lock.release()

    def _check(self) -> dict[str, Any] | None:
        chain = self.loop.versions
        head = chain.current
        if not head.get("promoted_ns") or not head.get("parent"):
            self.state = {"watching": None, "head": head["version"],
                          "message": f"{head['version']} was not promoted by a canary: nothing to watch"}
            return None
        parent = head["parent"]
        rows, _ = _episodes_in(Path(self.loop.config.episodes_from))
        mine = [r for r in rows if r["policy_version"] == head["version"] and r["start_ns"] >= head["promoted_ns"]]
        previous = [r for r in rows if r["policy_version"] == parent]
        for r in mine + previous:
            r.update(self._label(r))
        mine = [r for r in mine if r["success"] is not None]
        previous = [r for r in previous if r["success"] is not None]
        decision = watch([r["success"] for r in mine], [r["success"] for r in previous], self.rule)
        self.state = {"watching": head["version"], "previous": parent, "head": head["version"],
                      "message": decision.reason, "decision": decision.to_dict()}
        if decision.verdict != ROLL_BACK:
            return None
        node = self.loop.config.load_node
        print(f"    live watch: {head['version']} {decision.reason}; rolling back to {parent}", flush=True)
        message = node_rollback(node)
        after = node_version(node, expected=parent, timeout_s=30.0)
        if after != parent:
            raise StageError(f"{node}: the live watch rolled {head['version']} back but the node runs {after!r}, "
                             f"expected {parent}")
        used = mine[: decision.episodes]
        record = {"iteration": head.get("iteration"), "stage": "live watch", "verdict": "rolled back",
                  "candidate": head["version"], "current": parent, "reason": decision.reason,
                  "robot_episodes": decision.episodes, "watch": decision.to_dict(),
                  "episodes": [{k: r.get(k) for k in ("episode_id", "policy_version", "success", "source", "f1")}
                               for r in used],
                  "reference_episodes": len(previous), "node_message": message, "node_version_after": after,
                  "at": _now()}
        chain.revert(head["version"], record)
        self.state = {"watching": None, "head": parent, "message": f"rolled back {head['version']} to {parent}: "
                      f"{decision.reason}", "last_decision": record}
        print(f"    live watch: rolled back {head['version']}; {node} runs {after}", flush=True)
        return record

    # -- in the background -------------------------------------------------------------------
    def start(self) -> LiveWatch:
        """Run :meth:`check` every ``interval_s`` (and publish /diagnostics once a second) in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="wmpo-live-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (the check in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        with contextlib.ExitStack() as stack:
            publisher = None
            if self.publish:
                try:
                    publisher = stack.enter_context(_diagnostics_publisher())
                except Exception as exc:  # noqa: BLE001 - the watch still works without /diagnostics
                    print(f"    live watch: not publishing on /diagnostics ({type(exc).__name__}: {exc})", flush=True)
            next_check = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.interval_s
                    try:
                        self.check()
                    except Exception as exc:  # noqa: BLE001 - reported on /diagnostics and in the log, never fatal
                        self.error = f"{type(exc).__name__}: {exc}"
                        print(f"    live watch: {self.error}", flush=True)
                if publisher is not None:
                    publisher(self.diagnostic())
                self._stop.wait(1.0)

    def diagnostic(self) -> dict[str, Any]:
        """The state as a DiagnosticStatus's fields: level (0 OK, 1 WARN, 2 ERROR), message and key values."""
        chain = self.loop.versions
        last = chain.decisions[-1] if chain.decisions else None
        level = 2 if self.error else 1 if last and last.get("verdict") == "rolled back" else 0
        values = {"head": chain.current["version"], "watching": self.state.get("watching") or "",
                  "previous": self.state.get("previous", ""), "error": self.error or ""}
        dec = self.state.get("decision") or {}
        for key in ("episodes", "successes", "reference_episodes", "reference_successes", "cusum"):
            if key in dec:
                values[f"watch_{key}"] = f"{dec[key]:.3f}" if isinstance(dec[key], float) else str(dec[key])
        if dec:
            values["watch_threshold"] = f"{self.rule.threshold:g}"
        if last:
            values["last_decision"] = json.dumps({k: last.get(k) for k in ("stage", "verdict", "candidate", "current",
                                                                         "reason", "at")})
        message = self.error or self.state.get("message", "")
        return {"level": level, "message": message, "values": values}


@contextlib.contextmanager
def _diagnostics_publisher() -> Iterator[Any]:
    """A function publishing one DiagnosticStatus (``DIAGNOSTIC_NAME``) on /diagnostics (reliable, volatile)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                     history=HistoryPolicy.KEEP_LAST, depth=10)
    with _ros_session() as (node, _executor):
        pub = node.create_publisher(DiagnosticArray, "/diagnostics", qos)

        def publish(status: dict[str, Any]) -> None:
            msg = DiagnosticArray()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.status = [DiagnosticStatus(level=bytes([status["level"]]), name=DIAGNOSTIC_NAME,
                                           message=status["message"][:400], hardware_id=node.get_name(),
                                           values=[KeyValue(key=k, value=str(v)) for k, v in status["values"].items()])]
            pub.publish(msg)

        yield publish


# ============================================================================ report
def robot_report_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per decision of a robot run (versions.json), with the robot episodes recorded per version.

    No simulator: the numbers are the robot's own labelled episodes the decisions used.
    """
    from wmpo_core.pipeline.versions import VersionChain

    chain = VersionChain(run_dir / "versions.json")
    if not chain.entries:
        raise StageError(f"{run_dir}: no version chain (versions.json); is this a `wmpo loop` run?")
    rows = [{"iteration": None, "decision": "initial", "version": chain.entries[0]["version"],
             "robot_episodes": 0, "reason": chain.entries[0].get("source", "")}]
    for dec in chain.decisions:
        row = {"iteration": dec.get("iteration"), "decision": f"{dec['stage']}: {dec['verdict']}",
               "version": dec.get("candidate"), "current": dec.get("current"),
               "robot_episodes": dec.get("robot_episodes", 0), "reason": dec.get("reason", ""),
               "node_version_after": dec.get("node_version_after")}
        canary = dec.get("canary")
        if canary:
            row["canary_successes"] = f"{canary['canary_successes']}/{canary['canary_episodes']}"
            row["current_successes"] = f"{canary['current_successes']}/{canary['current_episodes']}"
            row["label_sources"] = sorted({e["source"] for e in dec.get("episodes", [])})
        watched = dec.get("watch")
        if watched:  # the live watch: the promoted version's episodes against the previous version's
            row["canary_successes"] = f"{watched['successes']}/{watched['episodes']}"
            row["current_successes"] = f"{watched['reference_successes']}/{watched['reference_episodes']}"
            row["label_sources"] = sorted({e["source"] for e in dec.get("episodes", [])})
        rows.append(row)
    rows.append({"iteration": None, "decision": "robot runs", "version": chain.current["version"],
                 "robot_episodes": sum(r["robot_episodes"] for r in rows), "reason": "head of the version chain"})
    return rows


def print_robot_report(run_dir: Path, as_json: bool = False) -> int:
    """`wmpo loop-report` of a robot run: the decisions and the robot episodes each cost (no simulator)."""
    import json
    import sys

    try:
        rows = robot_report_rows(run_dir)
    except (StageError, OSError, ValueError, KeyError) as exc:
        print(f"wmpo loop-report: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{run_dir.name}: decisions from the robot's own episodes (robot run: no simulator)")
    for col in ("iteration", "decision", "version", "robot episodes", "canary", "current", "labels", "node after",
                "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row("-" if r["iteration"] is None else str(r["iteration"]), r["decision"], str(r["version"]),
                      str(r["robot_episodes"]), r.get("canary_successes", ""), r.get("current_successes", ""),
                      ", ".join(r.get("label_sources", [])), str(r.get("node_version_after") or ""), r["reason"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0
