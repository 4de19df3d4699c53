"""`wmpo demo`: the whole WMPO loop on the simulated robot, one stage after another.

1. record scripted demonstrations straight in the simulator (through the ROS 2 graph with ``--ros-demos``)
2. behavior cloning: the base policy (`wmpo train-policy`), signed (`wmpo export`)
3. record base-policy rollouts through the ROS 2 graph (`wmpo record --policy BASE`)
4. world model: pretrain on the demonstrations, align on the rollouts (and the demonstrations with the
   recipe's ``align_on: "all"``; `wmpo train-world-model [--init]`)
5. link demonstrations and rollouts into one folder of training episodes (``DIR/data``)
6. reward model on demonstrations + rollouts (`wmpo train-reward`), its threshold calibrated on
   imagined replays of the rollouts (`wmpo calibrate-reward`; of all of them when the rollouts
   hold one outcome only)
7. GRPO in imagination (`wmpo grpo`), signed with the base as parent (`wmpo export`)
8. evaluate the base policy through the ROS 2 graph on a few held-out start states
9. push the improved policy to a running graph's policy node (`wmpo up` + `wmpo push`)
10. evaluate the pushed policy through the ROS 2 graph on the same start states
11. evaluate the base and the pushed policy straight in the simulator on ``--held-out`` start states
    (250 by default; parallel processes, `wmpo eval --jobs`), the first of them those of 8 and 10:
    the count a paired test needs, which the graph's real-time episodes could not give in the budget
12. report: before/after table, the paired test, DIR/report.html and DIR/report.json (wmpo_core.report)

The stages are the pipeline's steps (wmpo_core.pipeline.steps) with the task's recipe
(wmpo_core.pipeline.recipe; ``--recipe``, ``--wm-config``, ``--reward-config``, ``--grpo-config``),
the same definitions `wmpo loop` and `wmpo compare` run.

Each stage writes its outputs under ``--out`` and ``<stage>/stage.json`` when it finishes;
a re-run reuses every finished stage (``--fresh`` starts over). The stage plan with time
estimates is printed first; estimates scale with the chosen sizes and are replaced by the
measured time of each stage as it finishes. ``--direct`` runs the learned-policy episodes
(stages 3, 8, 10) straight in the simulator instead of through ROS. The scripted demonstrations
(stage 1) are recorded straight in the simulator unless ``--ros-demos`` (a real robot's come from
teleoperation through its own recorder; the graph's part is shown by stages 3, 8, 9 and 10).

The task's demo recipe (:data:`DEMO_RECIPES`; ``--recipe`` replaces it) may differ from the
recipe `wmpo loop` and `wmpo compare` default to: for lift it is ``lift_workspace.json``, the
recipe measured to improve the base policy within the demo's budget (docs/results.md). This module imports no
rclpy: ROS stages run `wmpo` commands as subprocesses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic
from wmpo_core.pipeline.recipe import RECIPE_DIR, Recipe, recipe_from_args
from wmpo_core.pipeline.runner import MARKER, Step, run_step, run_wmpo, wmpo_command
from wmpo_core.pipeline.steps import (
    Collection,
    collect,
    data_dir,
    evaluate,
    export_package,
    grpo_step,
    link_step,
    list_complete_episodes,
    make_keys,
    push_package,
    refresh_steps,
    reward_step,
    split_iterations,
    train_world_model,
)
from wmpo_core.stats import paired_outcomes, paired_verdict

# Time model of the stages (seconds on a 2-core CPU running the demo alone): fixed + per unit x size.
# Measured on this kind of machine in the demo of docs/results.md (lift_workspace recipe), torch's
# default threads (2) per training command: BC 0.33 s/step (recipe batch 32), VAE 0.48, world model
# 0.14 (64 px, batch 8), reward 0.17 (batch 16 clips) plus imagining the replays of the rollouts for
# its threshold, one GRPO iteration (up to 3 rounds of 8 starts x G = 8 imagined trajectories of 96
# frames, 8 informative groups per update) about 180 s.
# Episode costs: a scripted lift episode through the graph ~48 steps plus the steps recorded after
# success, an unimproved policy mostly runs to the step limit (120 for lift). Each finished
# stage's real time replaces its estimate.
GRAPH_START_S = 15.0  # `wmpo record` / `wmpo up`: start 4 node processes, import robosuite, first reset (6 s measured)
ROS_STEP_S = 0.10  # one lockstep control tick through the graph (64 px, two cameras; 0.10 s measured)
DIRECT_STEP_S = 0.03  # one simulator step with a camera plus the policy, no ROS
COMMAND_START_S = 12.0  # a `wmpo` training command: python + torch import, data loading
BC_STEP_S = 0.26  # measured: 600 steps in 158 s (demo, lift_workspace)
VAE_STEP_S = 0.22  # measured: 400 steps at ~4.5 it/s
WM_STEP_S = 0.115  # measured: 1200 + 300 steps at ~8 it/s
REWARD_STEP_S = 0.17
REPLAY_FRAME_S = 0.02  # imagining one frame of a replayed episode for the reward model
GRPO_ITER_S = 165.0  # 8 groups per update (lift_wmpo_workspace.json): 6 iterations in 993 s measured
HELD_OUT_STEP_S = 0.019  # one step of a held-out evaluation, per process (2 x 100 lift episodes: 247 s on 2)
DEMO_VAE_STEPS = 400
LIFT_SUCCESS_STEPS = 48  # a scripted lift succeeds in about this many steps through the graph


# The recipe `wmpo demo` uses for a task when no --recipe is given (else the task's shared recipe).
DEMO_RECIPES = {"lift": "lift_workspace.json"}


def demo_recipe(task: str) -> str | None:
    """The shipped recipe file `wmpo demo` defaults to for ``task`` (None: the task's shared recipe)."""
    name = DEMO_RECIPES.get(task)
    return str(RECIPE_DIR / name) if name else None


def held_out_jobs(episodes: int) -> int:
    """Simulator processes of the held-out evaluation: one per core, at most one per episode."""
    return max(1, min(os.cpu_count() or 1, episodes))


@dataclass
class Stage:
    """One stage of the demo as the plan shows it: a name, a title and a time estimate for the chosen sizes."""

    name: str
    title: str
    estimate: Callable[[argparse.Namespace], float]


# ============================================================================ helpers
def _log(out: Path, stage: str) -> Path:
    return out / stage / "commands.log"


def _task_steps(args: argparse.Namespace) -> int:
    from wmpo_core.sim.tasks import get_task

    return args.max_steps or get_task(args.task).max_steps


def _package_of(run: Path) -> Path:
    """Newest package a training run wrote (``package*`` or ``policy``)."""
    found = sorted(p for p in run.glob("package*") if (p / "manifest.json").is_file())
    if (run / "policy" / "manifest.json").is_file():
        found.append(run / "policy")
    if not found:
        raise StageError(f"{run}: no policy package was written")
    return found[-1]


def _public_key(out: Path) -> Path:
    """The demo's public key: the policy node loads only packages signed by it."""
    return out / "keys" / "wmpo_policy_signing.pub.pem"


def _private_key(out: Path) -> Path:
    return out / "keys" / "wmpo_policy_signing.pem"


def _sized(cmd: list[str], flag: str, value: Any) -> list[str]:
    return cmd + [flag, str(value)] if value is not None else cmd


def _collection(args: argparse.Namespace, out: Path, recipe: Recipe, policy: str, count: int, seed: int,
                noise: float | None = None, training_data: bool = False) -> Collection:
    """Episodes of ``policy``: through the ROS 2 graph, or straight in the simulator with --direct,
    with the recipe's cameras.

    A learned policy samples at ``--temperature``. Episodes that train the reward model
    (``training_data``) record ``--steps-after-success`` steps past a success.
    """
    direct = not args.ros_demos if policy == "scripted" else args.direct
    return Collection(policy, args.task, count, seed, direct=direct,
                      max_steps=args.max_steps, temperature=args.temperature, noise=noise,
                      steps_after_success=args.steps_after_success if training_data else None,
                      public_key=_public_key(out), cameras=recipe.cameras)


# ============================================================================ stages
def _stage_keys(out: Path) -> dict:
    make_keys(out / "keys", log=_log(out, "keys"))
    return {"private_key": str(_private_key(out)), "public_key": str(_public_key(out))}


def _stage_train_bc(args: argparse.Namespace, out: Path, recipe: Recipe) -> dict:
    demos = read_json(out / "record_demos" / MARKER)["episodes_dir"]
    run = out / "train_bc" / "run"
    cmd = ["train-policy", "--episodes", demos, "--out", str(run), "--no-progress"]
    if recipe.bc_recipe:  # the task's base-policy recipe, on these demos
        cmd += ["--recipe", recipe.bc_recipe]
    cmd = _sized(cmd, "--steps", args.bc_steps)
    cmd = _sized(cmd, "--train-config", args.bc_config)
    if args.bc_config is None:
        # The recipe pins one torch thread (right beside other jobs); the demo runs one stage at a
        # time, so BC gets every core: BC 1.35x faster on 2 cores, stage 258 s against 430 s.
        cmd += ["--threads", "0"]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    run_wmpo(*cmd, log=_log(out, "train_bc"))
    pkg = out / "train_bc" / "package"
    m = export_package(_package_of(run), pkg, _private_key(out), log=_log(out, "train_bc"))
    return {"run": str(run), "package": str(pkg), "version": m["version"], "parent": m.get("parent"),
            "tensorboard": str(run / "tensorboard")}


def _base(out: Path) -> dict:
    return read_json(out / "train_bc" / MARKER)


def _vae_steps(args: argparse.Namespace) -> int:
    """--vae-steps, else the demo's default."""
    if args.vae_steps is not None:
        return args.vae_steps
    return DEMO_VAE_STEPS


def _stage_world_model(args: argparse.Namespace, out: Path, recipe: Recipe, align_on: list[Path]) -> dict:
    """Pretrain on the demonstrations with the recipe's config, then align on ``align_on`` (the rollouts, and
    the demonstrations with the recipe's ``align_on: "all"``)."""
    log = _log(out, "world_model")
    # --vae-steps, else the config's own value, else the demo's default
    has_vae_steps = "vae_steps" in recipe.world_model_config_data()
    vae_steps = _vae_steps(args) if args.vae_steps is not None or not has_vae_steps else None
    pre = train_world_model([out / "record_demos" / "episodes"], out / "world_model" / "pretrain", recipe,
                            steps=args.wm_steps, vae_steps=vae_steps, log=log,
                            config_path=out / "world_model" / "config.json")
    aligned = train_world_model(align_on, out / "world_model" / "aligned", recipe,
                                init=Path(pre["run"]), steps=args.align_steps, log=log)
    return {"pretrain": pre["run"], "aligned": aligned["run"], "aligned_on": [str(e) for e in align_on],
            "config": pre["config"],
            "pretrain_final_loss": pre["final_loss"], "aligned_final_loss": aligned["final_loss"]}


def _round_seed(args: argparse.Namespace, recipe: Recipe, r: int) -> int:
    """The first start-state seed of round ``r``'s rollouts (r >= 1), after the base's and earlier rounds'; a
    ValueError when they would leave the policy-rollout seed range (the plan checks every round up front)."""
    from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS

    count = recipe.refresh_rollouts
    return POLICY_ROLLOUT_SEEDS.seeds(count, offset=args.seed + args.rollouts + (r - 1) * count)[0]


def _stage_grpo(args: argparse.Namespace, grpo: Step, out: Path, recipe: Recipe) -> dict:
    """GRPO in imagination from the base, in ``recipe.grpo_rounds`` rounds (the later ones after a refresh:
    :func:`~wmpo_core.pipeline.steps.refresh_steps`, in ``grpo/round_<n>``), then the last candidate signed
    with the base as parent."""
    result = grpo.run(grpo.folder)
    rollouts = [out / "record_rollouts" / "episodes"]
    sources = [out / "record_demos" / "episodes", *rollouts]
    world_model, budget = out / "world_model" / "aligned", read_json(out / "data" / MARKER)["episodes"]
    iterations = split_iterations(args.grpo_iterations, recipe.grpo_rounds)
    rounds = [{"round": 1, "iterations": iterations[0], "log": result["log"], "budget": budget}]
    for r in range(1, recipe.grpo_rounds):
        folder, count = out / "grpo" / f"round_{r + 1}", recipe.refresh_rollouts
        seed = _round_seed(args, recipe, r)
        collection = Collection(result["candidate"], args.task, count, seed, direct=True, max_steps=args.max_steps,
                                temperature=args.temperature, steps_after_success=args.steps_after_success,
                                cameras=recipe.cameras, jobs=held_out_jobs(count))
        done = {s.name: run_step(s, say=lambda text: print(f"    {text.strip()}", flush=True))
                for s in refresh_steps(folder, result["candidate"], world_model, sources, rollouts, recipe, collection,
                                       budget=budget, iterations=iterations[r], round_index=r,
                                       reward_steps=args.reward_steps)}
        result = done["grpo"]
        new = Path(done["collect"]["episodes_dir"])
        rollouts, sources, world_model = [*rollouts, new], [*sources, new], Path(done["world_model"]["run"])
        budget += done["collect"]["episodes"]
        rounds.append({"round": r + 1, "iterations": iterations[r], "log": result["log"], "budget": budget,
                       "rollouts": done["collect"]["episodes"], "rollout_successes": done["collect"]["successes"],
                       "reward_tau": done["reward"].get("tau"), "world_model": str(world_model)})
    base = _base(out)
    pkg = out / "grpo" / "package"
    m = export_package(result["candidate"], pkg, _private_key(out), parent=base["version"], log=_log(out, "grpo"))
    return {"run": result["run"], "package": str(pkg), "version": m["version"], "parent": m.get("parent"),
            "log": result["log"], "rounds": rounds}


def _eval_seed(args: argparse.Namespace) -> int:
    from wmpo_core.rl.config import EVALUATION_SEEDS

    return EVALUATION_SEEDS.seeds(args.eval_episodes, offset=args.seed)[0]


def _stage_eval_before(args: argparse.Namespace, out: Path, recipe: Recipe) -> dict:
    base = _base(out)
    result = collect(_collection(args, out, recipe, base["package"], args.eval_episodes, _eval_seed(args)),
                     out / "eval_before")
    return {**result, "version": base["version"], "parent": base.get("parent")}


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise StageError(f"{what}: `wmpo up` exited with code {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise StageError(f"{what}: not within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def _stage_push(args: argparse.Namespace, out: Path, recipe: Recipe) -> dict:
    """Start the graph with the base policy, push the improved one to its policy node, stop the graph."""
    base, new = _base(out), read_json(out / "grpo" / MARKER)
    robot_dir = out / "robot" / "policies"
    public = _public_key(out)
    log = _log(out, "push")
    if args.direct:
        installed, output = push_package(Path(new["package"]), str(robot_dir), public, log=log)
        return {"version": new["version"], "installed": installed, "loaded_by_node": False,
                "output": output, "note": "--direct: copied only, no running policy node"}
    up_log = out / "push" / "up.log"
    up_log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(up_log, "w") as sink:
        up = subprocess.Popen(wmpo_command("up", "--sim", "--task", args.task, "--policy", base["package"],
                                           "--public-key", str(_public_key(out)), "--policy-root", str(robot_dir),
                                           "--output-dir", str(out / "push" / "episodes"),
                                           *(["--cameras", ",".join(recipe.cameras)] if recipe.cameras else [])),
                              stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    try:
        _wait_for(lambda: f"simulated {args.task} ready" in up_log.read_text(), 300, "graph start", up, up_log)
        installed, output = push_package(Path(new["package"]), str(robot_dir), public, node="/policy", timeout=120,
                                         log=log)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # `wmpo up` stops its nodes in order on SIGINT
            try:
                up.wait(90)
            except subprocess.TimeoutExpired:
                up.kill()
    return {"version": new["version"], "installed": installed, "loaded_by_node": True, "output": output}


def _stage_eval_after(args: argparse.Namespace, out: Path, recipe: Recipe) -> dict:
    pushed = read_json(out / "push" / MARKER)
    new = read_json(out / "grpo" / MARKER)
    result = collect(_collection(args, out, recipe, pushed["installed"], args.eval_episodes, _eval_seed(args)),
                     out / "eval_after")
    return {**result, "version": new["version"], "parent": new.get("parent")}


def _stage_eval_held_out(args: argparse.Namespace, out: Path) -> dict:
    """The base and the pushed policy straight in the simulator on ``--held-out`` start states, in
    parallel processes: the same seeds for both, so every start state is a pair."""
    base, pushed, new = _base(out), read_json(out / "push" / MARKER), read_json(out / "grpo" / MARKER)
    if args.held_out == 0:
        return {"episodes": 0, "note": "--held-out 0: not evaluated"}
    jobs = held_out_jobs(args.held_out)
    log = _log(out, "eval_held_out")
    results = {}
    for name, package in (("base", base["package"]), ("pushed", pushed["installed"])):
        print(f"    {name}: {args.held_out} start states in {jobs} simulator processes", flush=True)
        report = evaluate(package, args.task, args.held_out, _eval_seed(args), max_steps=args.max_steps, log=log,
                          temperature=args.temperature, jobs=jobs)
        write_json_atomic(out / "eval_held_out" / f"{name}.json", report)
        results[name] = report
    rows = {name: {int(e["seed"]): bool(e["success"]) for e in r["per_episode"]} for name, r in results.items()}
    paired = paired_outcomes(rows["base"], rows["pushed"])
    return {"episodes": args.held_out, "jobs": jobs, "seeds": results["base"]["seeds"],
            "temperature": args.temperature, "paired": paired,
            "base": {"version": base["version"], "successes": results["base"]["successes"]},
            "pushed": {"version": new["version"], "parent": new.get("parent"),
                       "successes": results["pushed"]["successes"]}}


def _curves(out: Path) -> dict[str, dict[str, Any]]:
    from wmpo_core.report import read_tensorboard_scalars

    def losses(logdir: Path) -> dict[str, Any]:
        scalars = read_tensorboard_scalars(logdir)
        return {k: v for k, v in scalars.items() if "loss" in k.lower()}

    curves = {
        "behavior cloning": losses(out / "train_bc" / "run" / "tensorboard"),
        "world model (pretrain)": losses(out / "world_model" / "pretrain" / "tb"),
        "world model (aligned)": losses(out / "world_model" / "aligned" / "tb"),
        "reward model": losses(out / "reward" / "run" / "tb"),
        "GRPO in imagination": _grpo_series(out),
    }
    return {k: v for k, v in curves.items() if v}


def _grpo_series(out: Path) -> dict[str, list[list[float]]]:
    """GRPO's per-iteration log, the rounds after the first (``grpo/round_<n>``) continuing its iteration count."""
    from wmpo_core.report import read_jsonl_series

    keys = ("imagination_success_rate", "kept_fraction", "loss")
    logs = [out / "grpo" / "run" / "log.jsonl"]
    logs += sorted(out.glob("grpo/round_*/grpo/run/log.jsonl"), key=lambda p: int(p.parts[-4].split("_")[1]))
    series: dict[str, list[list[float]]] = {}
    shift = 0.0
    for log in logs:
        part = read_jsonl_series(log, "iteration", keys)
        for k, points in part.items():
            series.setdefault(k, []).extend([[x + shift, y] for x, y in points])
        shift = max((x for pts in series.values() for x, _ in pts), default=shift)
    return series


def _outcomes_by_seed(stage: Path) -> dict[int, bool]:
    """Start-state seed -> success of an evaluation stage's complete episodes (seeds from their metadata)."""
    episodes = read_json(stage / MARKER)["episodes_dir"]
    return {int(e["seed"]): bool(e["success"]) for e in list_complete_episodes(Path(episodes)) if e["seed"] is not None}


def _stage_report(args: argparse.Namespace, out: Path) -> dict:
    from wmpo_core.report import version_row, write_report

    notes = []
    videos = []
    rollouts = read_json(out / "record_rollouts" / MARKER)["episodes_dir"]
    episode = next(iter(list_complete_episodes(Path(rollouts))), None)
    if episode is not None:
        video = out / "report_media" / "real_vs_imagined.mp4"
        try:
            run_wmpo("imagine", "--model", read_json(out / "world_model" / MARKER)["aligned"], "--episode",
                     episode["path"], "--out", str(video), "--replay-actions", "--scale", "2", log=_log(out, "report"),
                     capture=True)
            videos.append({"title": f"real vs imagined (recorded actions replayed), episode {episode['episode_id']}",
                           "path": str(video.with_suffix(".gif").relative_to(out))})
        except StageError as exc:
            notes.append(f"video not made: {exc}")
    rows = []
    demos = read_json(out / "record_demos" / MARKER)
    rows.append(version_row("scripted demonstrator", "scripted", demos["successes"], demos["episodes"],
                            seeds=demos["seeds"], evaluated_via=f"{demos['evaluated_via']}, demonstration seeds"))
    for label, stage in (("before (BC base)", "eval_before"), ("after (WMPO)", "eval_after")):
        r = read_json(out / stage / MARKER)
        rows.append(version_row(label, r["version"], r["successes"], r["episodes"], parent=r.get("parent"),
                                seeds=r["seeds"], evaluated_via=f"{r['evaluated_via']}, held-out seeds"))
    held = read_json(out / "eval_held_out" / MARKER)
    if held["episodes"]:
        for label, key in (("before (BC base)", "base"), ("after (WMPO)", "pushed")):
            r = held[key]
            rows.append(version_row(label, r["version"], r["successes"], held["episodes"], parent=r.get("parent"),
                                    seeds=held["seeds"],
                                    evaluated_via=f"simulator ({held['jobs']} processes), held-out seeds"))
    stages = []
    for s in STAGES:
        marker = out / s.name / MARKER
        measured = read_json(marker).get("seconds") if marker.is_file() else None
        stages.append({"name": s.name, "title": s.title, "estimate_s": round(s.estimate(args)),
                       "seconds": measured})
    before, after = _outcomes_by_seed(out / "eval_before"), _outcomes_by_seed(out / "eval_after")
    shared = sorted(set(before) & set(after))  # an episode that did not complete leaves its pair out
    paired = paired_outcomes({s: before[s] for s in shared}, {s: after[s] for s in shared}) if shared else None
    if paired is not None:
        paired["evaluated_via"] = "ROS 2 graph"
    if held["episodes"]:  # the larger evaluation decides; the graph's pairs stay in the notes
        if paired is not None:
            notes.append(f"through the ROS 2 graph, paired on {paired['pairs']} start states: wins {paired['wins']}, "
                         f"losses {paired['losses']}, one-sided p = {paired['p_one_sided']:.3g}")
        paired = {**held["paired"], "evaluated_via": f"simulator ({held['jobs']} processes)"}
    html_path, json_path = write_report(out, title="WMPO demo: simulated robot through ROS 2", task=args.task,
                                        versions=rows, stages=stages, curves=_curves(out), videos=videos,
                                        notes=notes, paired=paired)
    print_table(rows)
    if paired is not None:
        print(f"  paired on {paired['pairs']} held-out start states ({paired['evaluated_via']}): after WMPO solves "
              f"{paired['wins']} the base fails, fails {paired['losses']} it solves: {paired_verdict(paired)}")
    return {"report_html": str(html_path), "report_json": str(json_path)}


def print_table(rows: list[dict[str, Any]]) -> None:
    """The before/after table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="success rate on held-out start states")
    for col in ("policy", "version", "success", "95% CI", "episodes", "via"):
        table.add_column(col)
    for r in rows:
        lo, hi = r["ci95"]
        table.add_row(r["label"], str(r["version"]), f"{100 * r['success_rate']:.0f}%",
                      f"{100 * lo:.0f}-{100 * hi:.0f}%", str(r["episodes"]), r["evaluated_via"])
    Console().print(table)


# ============================================================================ plan
def _ros_episodes(count: int, steps: int) -> float:
    return GRAPH_START_S + count * steps * ROS_STEP_S


def _policy_episodes(args: argparse.Namespace, count: int) -> float:
    steps = _task_steps(args)  # an unimproved policy mostly runs to the step limit
    return (COMMAND_START_S + count * steps * DIRECT_STEP_S) if args.direct else _ros_episodes(count, steps)


def _steps(value: int | None, default: int) -> int:
    return value if value is not None else default


def _grpo_estimate(a: argparse.Namespace) -> float:
    """GRPO's iterations, and for every round after the first its refresh: rollouts straight in the
    simulator (parallel), the alignment, the reward retrained and its threshold calibrated."""
    rounds, count, align = getattr(a, "refresh", None) or (1, 0, 0)
    refresh = (4 * COMMAND_START_S + count * _task_steps(a) * HELD_OUT_STEP_S / held_out_jobs(max(count, 1))
               + align * WM_STEP_S + _steps(a.reward_steps, 1500) * REWARD_STEP_S
               + (a.rollouts + count) * _task_steps(a) * REPLAY_FRAME_S)
    return 2 * COMMAND_START_S + _steps(a.grpo_iterations, 20) * GRPO_ITER_S + (rounds - 1) * refresh


STAGES: list[Stage] = [
    Stage("keys", "Make a signing key pair", lambda a: 3.0),
    Stage("record_demos", "Record scripted demonstrations (straight in the simulator; --ros-demos: through ROS 2)",
          lambda a: (_ros_episodes(a.demos, LIFT_SUCCESS_STEPS + a.steps_after_success) if a.ros_demos else
                     COMMAND_START_S + a.demos * (LIFT_SUCCESS_STEPS + a.steps_after_success) * DIRECT_STEP_S)),
    Stage("train_bc", "Behavior cloning: the base policy (signed)",
          lambda a: 2 * COMMAND_START_S + _steps(a.bc_steps, 600) * BC_STEP_S),
    Stage("record_rollouts", "Record base-policy rollouts through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.rollouts)),
    Stage("world_model", "World model: pretrain on demonstrations, then behaviour alignment",
          lambda a: 2 * COMMAND_START_S + _vae_steps(a) * VAE_STEP_S
          + (_steps(a.wm_steps, 1200) + _steps(a.align_steps, 300)) * WM_STEP_S),
    Stage("data", "Link demonstrations and rollouts: the training episodes", lambda a: 1.0),
    Stage("reward", "Reward model on demonstrations and rollouts, threshold calibrated in imagination",
          lambda a: COMMAND_START_S + _steps(a.reward_steps, 1500) * REWARD_STEP_S
          + a.rollouts * _task_steps(a) * REPLAY_FRAME_S),
    Stage("grpo", "GRPO in imagination (signed, parent = base)", lambda a: _grpo_estimate(a)),
    Stage("eval_before", "Evaluate the base policy through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.eval_episodes)),
    Stage("push", "Push the improved policy to the running policy node",
          lambda a: COMMAND_START_S if a.direct else GRAPH_START_S),
    Stage("eval_after", "Evaluate the pushed policy through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.eval_episodes)),
    Stage("eval_held_out", "Evaluate both policies in the simulator on the held-out start states (parallel)",
          lambda a: 2 * (COMMAND_START_S + a.held_out * _task_steps(a) * HELD_OUT_STEP_S
                         / held_out_jobs(max(a.held_out, 1)))),
    Stage("report", "Report: before/after table, paired test, report.html, report.json",
          lambda a: COMMAND_START_S + 10.0),
]


def plan(args: argparse.Namespace, out: Path, recipe: Recipe | None = None) -> list[Step]:
    """The demo's steps in ``out``, in :data:`STAGES` order (nothing runs)."""
    from wmpo_core.rl.config import DEMONSTRATION_SEEDS, POLICY_ROLLOUT_SEEDS

    if recipe is None:
        chosen = getattr(args, "recipe", None) or demo_recipe(args.task)
        recipe = recipe_from_args(argparse.Namespace(**{**vars(args), "recipe": chosen}))
    demos, rollouts = out / "record_demos" / "episodes", out / "record_rollouts" / "episodes"
    aligned = out / "world_model" / "aligned"
    align_on = recipe.alignment_episodes([rollouts], [demos])
    data = data_dir(out / "data")
    base_package = str(out / "train_bc" / "package")
    demo_seed = DEMONSTRATION_SEEDS.seeds(args.demos, offset=args.seed)[0]
    rollout_seed = POLICY_ROLLOUT_SEEDS.seeds(args.rollouts, offset=args.seed)[0]

    def budget() -> int:
        return read_json(out / "data" / MARKER)["episodes"]

    for r in range(1, recipe.grpo_rounds):  # a round's rollout seeds out of range: refused now, not hours in
        _round_seed(args, recipe, r)
    # The GRPO stage's estimate reads the recipe's rounds (_grpo_estimate).
    args.refresh = (recipe.grpo_rounds, recipe.refresh_rollouts, recipe.refresh_align_steps)
    iterations = split_iterations(args.grpo_iterations, recipe.grpo_rounds)
    grpo = grpo_step(out / "grpo", base_package, aligned, out / "reward", [data], recipe, budget=budget,
                     iterations=iterations[0])
    steps = {
        "keys": (lambda d: _stage_keys(out), {}),
        "record_demos": (None, _collection(args, out, recipe, "scripted", args.demos, demo_seed, noise=args.noise,
                                           training_data=True)),
        "train_bc": (lambda d: _stage_train_bc(args, out, recipe), {"recipe": recipe, "bc_recipe": recipe.bc_recipe}),
        "record_rollouts": (None, _collection(args, out, recipe, base_package, args.rollouts, rollout_seed,
                                              training_data=True)),
        "world_model": (lambda d: _stage_world_model(args, out, recipe, align_on),
                        {"recipe": recipe, "config": recipe.world_model_config, "camera": recipe.camera,
                         "align_on": align_on}),
        "data": link_step(out / "data", [demos, rollouts]),
        "reward": reward_step(out / "reward", data, aligned, recipe, steps=args.reward_steps, calibrate_on=[rollouts]),
        "grpo": (lambda d: _stage_grpo(args, grpo, out, recipe), {**grpo.inputs, "rounds": recipe.grpo_rounds}),
        "eval_before": (lambda d: _stage_eval_before(args, out, recipe), {"cameras": recipe.cameras}),
        "push": (lambda d: _stage_push(args, out, recipe), {"cameras": recipe.cameras}),
        "eval_after": (lambda d: _stage_eval_after(args, out, recipe), {"cameras": recipe.cameras}),
        "eval_held_out": (lambda d: _stage_eval_held_out(args, out), {"episodes": args.held_out}),
        "report": (lambda d: _stage_report(args, out), {}),
    }
    result = []
    for stage in STAGES:
        made = steps[stage.name]
        if isinstance(made, Step):
            result.append(Step(stage.name, stage.title, out / stage.name, made.run, made.inputs, made.outputs))
        elif isinstance(made[1], Collection):
            result.append(Step(stage.name, stage.title, out / stage.name, lambda d, c=made[1]: collect(c, d),
                               {"collection": made[1]}, ("episodes_dir", "episodes", "successes", "seeds")))
        else:
            result.append(Step(stage.name, stage.title, out / stage.name, made[0], made[1]))
    return result


# The demo marks its folder with this file, listing what was there before it first wrote
# anything; `--fresh` removes only the demo's own outputs (demo_outputs()) and never those.
DEMO_MARK = ".wmpo-demo.json"


def demo_outputs() -> tuple[str, ...]:
    """Names of the entries `wmpo demo` writes directly in its folder."""
    return (*(s.name for s in STAGES), "robot", "report_media", "report.html", "report.json")


def mark_demo_folder(out: Path) -> None:
    """Create `out` if needed and mark it as a demo folder, recording the entries that were not the demo's."""
    out.mkdir(parents=True, exist_ok=True)
    mark = out / DEMO_MARK
    if not mark.exists():
        foreign = sorted(p.name for p in out.iterdir())
        write_json_atomic(mark, {"written_by": "wmpo demo", "present_before": foreign})


def remove_demo_outputs(out: Path) -> str | None:
    """`--fresh`: remove what earlier demo runs wrote in `out`, nothing else; a reason if it would not."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is not a folder"
    mark = out / DEMO_MARK
    ours = [out / name for name in demo_outputs() if (out / name).exists() or (out / name).is_symlink()]
    if not mark.is_file():
        if ours:
            return (f"{out} has no {DEMO_MARK} (it was not made by this version of `wmpo demo`), so "
                    f"{', '.join(p.name for p in ours)} may not be the demo's: remove them yourself or use a new --out")
        return None
    try:
        before = set(read_json(mark).get("present_before", []))
    except (OSError, ValueError, AttributeError) as exc:
        return f"{mark}: unreadable ({exc}); remove what you want gone yourself or use a new --out"
    for path in ours:
        if path.name in before:
            continue  # was there before the demo first used the folder: the user's
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return None


def stage_results(out: Path) -> dict[str, Any]:
    """Markers of the finished stages of a demo folder, by stage name."""
    return {s.name: read_json(out / s.name / MARKER) for s in STAGES if (out / s.name / MARKER).is_file()}
