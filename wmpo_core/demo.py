"""`wmpo demo`: the whole WMPO loop on the simulated robot, one stage after another.

1. record scripted demonstrations through the ROS 2 graph (`wmpo record --sim`)
2. behavior cloning: the base policy (`wmpo train-policy`), signed (`wmpo export`)
3. record base-policy rollouts through the ROS 2 graph (`wmpo record --policy BASE`)
4. world model: pretrain on the demonstrations, align on the rollouts (`wmpo train-world-model [--init]`)
5. reward model on demonstrations + rollouts (`wmpo train-reward`), its threshold calibrated on
   imagined replays of them (`wmpo calibrate-reward`)
6. GRPO in imagination (`wmpo grpo`), signed with the base as parent (`wmpo export`)
7. evaluate the base policy through the ROS 2 graph on held-out start states
8. push the improved policy to a running graph's policy node (`wmpo up` + `wmpo push`)
9. evaluate the pushed policy through the ROS 2 graph on the same start states
10. report: before/after table, DIR/report.html and DIR/report.json (wmpo_core.report)

Each stage writes its outputs under ``--out`` and ``<stage>/stage.json`` when it finishes;
a re-run reuses every finished stage (``--fresh`` starts over). The stage plan with time
estimates is printed first; estimates scale with the chosen sizes and are replaced by the
measured time of each stage as it finishes. ``--direct`` runs the learned-policy episodes
(stages 3, 7, 9) straight in the simulator instead of through ROS. This module imports no
rclpy: ROS stages run `wmpo` commands as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.loop import (
    MARKER,
    StageError,
    last_json_line,
    link_episodes,
    list_complete_episodes,
    read_json,
    record_in_sim,
    record_through_ros,
    run_stage,
    run_wmpo,
    train_calibrated_reward,
    wmpo_command,
    write_json_atomic,
)

HELP = "run the whole loop on the simulated robot (ROS 2 graph, BC, world + reward models, GRPO, push) and write a report"

# Time model of the stages (seconds on a 2-core CPU running the demo alone): fixed + per unit x size.
# Measured on this kind of machine, torch's default threads (2) per training command:
# BC 0.42 s/step (recipe batch 32), VAE 0.48, world model 0.20 (64 px recipe, batch 8), reward
# 0.35 (batch 16 clips) plus imagining the replays of its episodes, one GRPO iteration of the lift
# config (up to 3 rounds of 4 starts x G = 8 imagined trajectories of 96 frames) about 150 s.
# Episode costs: a scripted lift episode through the graph ~48 steps plus the steps recorded after
# success, an unimproved policy mostly runs to the step limit (120 for lift). Each finished
# stage's real time replaces its estimate.
GRAPH_START_S = 15.0  # `wmpo record` / `wmpo up`: start 4 node processes, import robosuite, first reset (6 s measured)
ROS_STEP_S = 0.10  # one lockstep control tick through the graph (64 px, two cameras; 0.10 s measured)
DIRECT_STEP_S = 0.03  # one simulator step with a camera plus the policy, no ROS
COMMAND_START_S = 12.0  # a `wmpo` training command: python + torch import, data loading
BC_STEP_S = 0.42
VAE_STEP_S = 0.48
WM_STEP_S = 0.20
REWARD_STEP_S = 0.35
REPLAY_FRAME_S = 0.02  # imagining one frame of a replayed episode for the reward model
GRPO_ITER_S = 150.0
DEMO_VAE_STEPS = 400
LIFT_SUCCESS_STEPS = 48  # a scripted lift succeeds in about this many steps through the graph
RECIPE_DIR = Path(__file__).parent / "policy" / "recipes"
RL_CONFIG_DIR = Path(__file__).parent / "rl" / "configs"
DEFAULT_WM_CONFIG = Path(__file__).parent / "world_model" / "configs" / "sim64.json"
DEFAULT_REWARD_CONFIG = Path(__file__).parent / "reward" / "configs" / "lift.json"


@dataclass
class Stage:
    """One step of the demo: a name, a time estimate for the chosen sizes and what it runs."""

    name: str
    title: str
    estimate: Callable[[argparse.Namespace], float]
    run: Callable[[argparse.Namespace, Path], dict]


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


def _manifest(pkg: Path) -> dict[str, Any]:
    from wmpo_core.registry.package import read_package_manifest

    return read_package_manifest(pkg)


def _episodes_summary(folder: Path) -> dict[str, Any]:
    rows = list_complete_episodes(folder)
    successes = sum(1 for r in rows if r.get("success"))
    return {"episodes_dir": str(folder), "episodes": len(rows), "successes": successes,
            "success_rate": successes / len(rows) if rows else 0.0}


def _record(args: argparse.Namespace, out: Path, stage: str, policy: str, count: int, seed: int,
            noise: float | None = None, training_data: bool = False) -> dict[str, Any]:
    """Episodes of ``policy``: through the ROS 2 graph, or straight in the simulator with --direct.

    A learned policy samples at ``--temperature``. Episodes that train the reward model
    (``training_data``) record ``--steps-after-success`` steps past a success.
    """
    episodes = out / stage / "episodes"
    if episodes.exists():
        shutil.rmtree(episodes)  # a half-finished earlier attempt: record the stage afresh
    extra = args.steps_after_success if training_data else None
    if args.direct and policy != "scripted":
        print(f"    {count} episodes directly in the simulator (--direct: no ROS graph)", flush=True)
        rows = record_in_sim(policy, args.task, count, seed, episodes, max_steps=args.max_steps,
                             temperature=args.temperature, steps_after_success=extra or 0)
        via = "simulator (direct)"
    else:
        rows = record_through_ros(policy, args.task, count, seed, episodes, max_steps=args.max_steps,
                                  log=_log(out, stage), public_key=_public_key(out), noise=noise,
                                  temperature=args.temperature, extra_steps=extra)
        via = "ROS 2 graph"
    if not rows:
        raise StageError(f"{episodes}: no complete episode was recorded")
    summary = _episodes_summary(episodes)
    summary.update({"evaluated_via": via, "policy": policy, "first_seed": seed,
                    "seeds": list(range(seed, seed + count))})
    return summary


def _public_key(out: Path) -> Path:
    """The demo's public key: the policy node loads only packages signed by it."""
    return out / "keys" / "wmpo_policy_signing.pub.pem"


def _sized(cmd: list[str], flag: str, value: Any) -> list[str]:
    return cmd + [flag, str(value)] if value is not None else cmd


# ============================================================================ stages
def _stage_keys(args: argparse.Namespace, out: Path) -> dict:
    keys = out / "keys"
    if not (keys / "wmpo_policy_signing.pem").is_file():
        if keys.exists():
            shutil.rmtree(keys)
        run_wmpo("keygen", "--out", str(keys), log=_log(out, "keys"))
    return {"private_key": str(keys / "wmpo_policy_signing.pem"), "public_key": str(keys / "wmpo_policy_signing.pub.pem")}


def _stage_record_demos(args: argparse.Namespace, out: Path) -> dict:
    from wmpo_core.rl.config import DEMONSTRATION_SEEDS

    seed = DEMONSTRATION_SEEDS.seeds(args.demos, offset=args.seed)[0]
    return _record(args, out, "record_demos", "scripted", args.demos, seed, noise=args.noise, training_data=True)


def _stage_train_bc(args: argparse.Namespace, out: Path) -> dict:
    demos = read_json(out / "record_demos" / MARKER)["episodes_dir"]
    run = out / "train_bc" / "run"
    cmd = ["train-policy", "--episodes", demos, "--out", str(run), "--no-progress"]
    if RECIPE_DIR.joinpath(f"{args.task}_base.json").is_file():  # the task's base-policy recipe, on these demos
        cmd += ["--recipe", f"{args.task}_base"]
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
    if pkg.exists():
        shutil.rmtree(pkg)
    run_wmpo("export", str(_package_of(run)), "--out", str(pkg), "--key", str(out / "keys" / "wmpo_policy_signing.pem"),
             log=_log(out, "train_bc"))
    m = _manifest(pkg)
    return {"run": str(run), "package": str(pkg), "version": m["version"], "parent": m.get("parent"),
            "tensorboard": str(run / "tensorboard")}


def _base(out: Path) -> dict:
    return read_json(out / "train_bc" / MARKER)


def _stage_record_rollouts(args: argparse.Namespace, out: Path) -> dict:
    from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS

    seed = POLICY_ROLLOUT_SEEDS.seeds(args.rollouts, offset=args.seed)[0]
    return _record(args, out, "record_rollouts", _base(out)["package"], args.rollouts, seed, training_data=True)


def _wm_config(args: argparse.Namespace, out: Path) -> Path:
    """--wm-config (default: the 64 px simulator recipe) with the demo's VAE step count applied."""
    data = read_json(Path(args.wm_config or DEFAULT_WM_CONFIG))
    if args.vae_steps is not None or "vae_steps" not in data:
        data["vae_steps"] = _vae_steps(args)
    path = out / "world_model" / "config.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _vae_steps(args: argparse.Namespace) -> int:
    """--vae-steps, else the --wm-config value, else the demo's default (60)."""
    if args.vae_steps is not None:
        return args.vae_steps
    return DEMO_VAE_STEPS


def _stage_world_model(args: argparse.Namespace, out: Path) -> dict:
    demos = read_json(out / "record_demos" / MARKER)["episodes_dir"]
    rollouts = read_json(out / "record_rollouts" / MARKER)["episodes_dir"]
    log = _log(out, "world_model")
    pre = out / "world_model" / "pretrain"
    config = str(_wm_config(args, out))
    cmd = ["train-world-model", "--episodes", demos, "--out", str(pre)]
    cmd = _sized(_sized(cmd, "--config", config), "--steps", args.wm_steps)
    pre_summary = last_json_line(run_wmpo(*cmd, log=log, capture=True).stdout, "wmpo train-world-model")
    aligned = out / "world_model" / "aligned"
    cmd = ["train-world-model", "--episodes", rollouts, "--out", str(aligned), "--init", str(pre)]
    cmd = _sized(_sized(cmd, "--config", config), "--steps", args.align_steps)
    align_summary = last_json_line(run_wmpo(*cmd, log=log, capture=True).stdout, "wmpo train-world-model --init")
    return {"pretrain": str(pre), "aligned": str(aligned), "pretrain_final_loss": pre_summary.get("final_loss"),
            "aligned_final_loss": align_summary.get("final_loss")}


def _all_episodes(out: Path, stage: str) -> Path:
    sources = [Path(read_json(out / s / MARKER)["episodes_dir"]) for s in ("record_demos", "record_rollouts")]
    data = out / stage / "data"
    link_episodes(sources, data)
    return data


def _stage_reward(args: argparse.Namespace, out: Path) -> dict:
    config = args.reward_config or (str(DEFAULT_REWARD_CONFIG) if args.task == "lift" else None)
    return train_calibrated_reward(_all_episodes(out, "reward"), Path(read_json(out / "world_model" / MARKER)["aligned"]),
                                   out / "reward", config=config, steps=args.reward_steps, log=_log(out, "reward"))


def _grpo_config(args: argparse.Namespace, out: Path) -> Path:
    """--grpo-config, else the task's shipped WMPO config (lift), else the WMPOConfig defaults."""
    if args.grpo_config:
        return Path(args.grpo_config)
    shipped = RL_CONFIG_DIR / f"{args.task}_wmpo.json"
    path = out / "grpo" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(read_json(shipped) if shipped.is_file() else {}, indent=2) + "\n")
    return path


def _stage_grpo(args: argparse.Namespace, out: Path) -> dict:
    base = _base(out)
    wm = read_json(out / "world_model" / MARKER)["aligned"]
    reward = read_json(out / "reward" / MARKER)["run"]
    data = _all_episodes(out, "grpo")
    run = out / "grpo" / "run"
    budget = read_json(out / "record_rollouts" / MARKER)["episodes"] + read_json(out / "record_demos" / MARKER)["episodes"]
    cmd = ["grpo", "--policy", base["package"], "--world-model", wm, "--reward", reward, "--episodes", str(data),
           "--out", str(run), "--budget", str(budget), "--quiet"]
    cmd = _sized(_sized(cmd, "--config", str(_grpo_config(args, out))), "--iterations", args.grpo_iterations)
    log = _log(out, "grpo")
    if not (run / "policy" / "manifest.json").is_file():  # else: trained, only the marker was missing
        run_wmpo(*cmd, log=log)
    pkg = out / "grpo" / "package"
    if pkg.exists():
        shutil.rmtree(pkg)
    run_wmpo("export", str(run / "policy"), "--out", str(pkg), "--key", str(out / "keys" / "wmpo_policy_signing.pem"),
             "--parent", base["version"], log=log)
    m = _manifest(pkg)
    return {"run": str(run), "package": str(pkg), "version": m["version"], "parent": m.get("parent"),
            "log": str(run / "log.jsonl")}


def _eval_seed(args: argparse.Namespace) -> int:
    from wmpo_core.rl.config import EVALUATION_SEEDS

    return EVALUATION_SEEDS.seeds(args.eval_episodes, offset=args.seed)[0]


def _stage_eval_before(args: argparse.Namespace, out: Path) -> dict:
    base = _base(out)
    result = _record(args, out, "eval_before", base["package"], args.eval_episodes, _eval_seed(args))
    return {**result, "version": base["version"], "parent": base.get("parent")}


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise StageError(f"{what}: `wmpo up` exited with code {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise StageError(f"{what}: not within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def _stage_push(args: argparse.Namespace, out: Path) -> dict:
    """Start the graph with the base policy, push the improved one to its policy node, stop the graph."""
    base, new = _base(out), read_json(out / "grpo" / MARKER)
    robot_dir = out / "robot" / "policies"
    public = _public_key(out)
    log = _log(out, "push")
    if args.direct:
        proc = run_wmpo("push", new["package"], "--to", str(robot_dir), "--public-key", str(public), "--no-load",
                        log=log, capture=True)
        return {"version": new["version"], "installed": str(robot_dir / new["version"]), "loaded_by_node": False,
                "output": proc.stdout.strip(), "note": "--direct: copied only, no running policy node"}
    up_log = out / "push" / "up.log"
    up_log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(up_log, "w") as sink:
        up = subprocess.Popen(wmpo_command("up", "--sim", "--task", args.task, "--policy", base["package"],
                                           "--public-key", str(_public_key(out)), "--policy-root", str(robot_dir),
                                           "--output-dir", str(out / "push" / "episodes")),
                              stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    try:
        _wait_for(lambda: f"simulated {args.task} ready" in up_log.read_text(), 300, "graph start", up, up_log)
        proc = run_wmpo("push", new["package"], "--to", str(robot_dir), "--public-key", str(public), "--node", "/policy",
                        "--timeout", "120", log=log, capture=True)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # `wmpo up` stops its nodes in order on SIGINT
            try:
                up.wait(90)
            except subprocess.TimeoutExpired:
                up.kill()
    return {"version": new["version"], "installed": str(robot_dir / new["version"]), "loaded_by_node": True,
            "output": proc.stdout.strip()}


def _stage_eval_after(args: argparse.Namespace, out: Path) -> dict:
    pushed = read_json(out / "push" / MARKER)
    new = read_json(out / "grpo" / MARKER)
    result = _record(args, out, "eval_after", pushed["installed"], args.eval_episodes, _eval_seed(args))
    return {**result, "version": new["version"], "parent": new.get("parent")}


def _curves(out: Path) -> dict[str, dict[str, Any]]:
    from wmpo_core.report import read_jsonl_series, read_tensorboard_scalars

    def losses(logdir: Path) -> dict[str, Any]:
        scalars = read_tensorboard_scalars(logdir)
        return {k: v for k, v in scalars.items() if "loss" in k.lower()}

    curves = {
        "behavior cloning": losses(out / "train_bc" / "run" / "tensorboard"),
        "world model (pretrain)": losses(out / "world_model" / "pretrain" / "tb"),
        "world model (aligned)": losses(out / "world_model" / "aligned" / "tb"),
        "reward model": losses(out / "reward" / "run" / "tb"),
        "GRPO in imagination": read_jsonl_series(out / "grpo" / "run" / "log.jsonl", "iteration",
                                                 ("imagination_success_rate", "kept_fraction", "loss")),
    }
    return {k: v for k, v in curves.items() if v}


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
    stages = []
    for s in STAGES:
        marker = out / s.name / MARKER
        measured = read_json(marker).get("seconds") if marker.is_file() else None
        stages.append({"name": s.name, "title": s.title, "estimate_s": round(s.estimate(args)),
                       "seconds": measured})
    html_path, json_path = write_report(out, title="WMPO demo: simulated robot through ROS 2", task=args.task,
                                        versions=rows, stages=stages, curves=_curves(out), videos=videos,
                                        notes=notes)
    print_table(rows)
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


STAGES: list[Stage] = [
    Stage("keys", "Make a signing key pair", lambda a: 3.0, _stage_keys),
    Stage("record_demos", "Record scripted demonstrations through the ROS 2 graph",
          lambda a: _ros_episodes(a.demos, LIFT_SUCCESS_STEPS + a.steps_after_success), _stage_record_demos),
    Stage("train_bc", "Behavior cloning: the base policy (signed)",
          lambda a: 2 * COMMAND_START_S + _steps(a.bc_steps, 600) * BC_STEP_S, _stage_train_bc),
    Stage("record_rollouts", "Record base-policy rollouts through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.rollouts), _stage_record_rollouts),
    Stage("world_model", "World model: pretrain on demonstrations, align on rollouts",
          lambda a: 2 * COMMAND_START_S + _vae_steps(a) * VAE_STEP_S
          + (_steps(a.wm_steps, 1500) + _steps(a.align_steps, 500)) * WM_STEP_S, _stage_world_model),
    Stage("reward", "Reward model on demonstrations and rollouts, threshold calibrated in imagination",
          lambda a: COMMAND_START_S + _steps(a.reward_steps, 1500) * REWARD_STEP_S
          + (a.demos * LIFT_SUCCESS_STEPS + a.rollouts * _task_steps(a)) * REPLAY_FRAME_S, _stage_reward),
    Stage("grpo", "GRPO in imagination (signed, parent = base)",
          lambda a: 2 * COMMAND_START_S + _steps(a.grpo_iterations, 20) * GRPO_ITER_S, _stage_grpo),
    Stage("eval_before", "Evaluate the base policy through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.eval_episodes), _stage_eval_before),
    Stage("push", "Push the improved policy to the running policy node",
          lambda a: COMMAND_START_S if a.direct else GRAPH_START_S + 30.0, _stage_push),
    Stage("eval_after", "Evaluate the pushed policy through the ROS 2 graph",
          lambda a: _policy_episodes(a, a.eval_episodes), _stage_eval_after),
    Stage("report", "Report: before/after table, report.html, report.json",
          lambda a: COMMAND_START_S + 10.0, _stage_report),
]


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo demo`; the defaults fit in about 45 minutes on a 2-core CPU."""
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--task", default="lift", help="simulated task (default: lift)")
    parser.add_argument("--demos", type=int, default=40, help="scripted demonstrations (default 40)")
    parser.add_argument("--rollouts", type=int, default=16, help="base-policy rollouts (default 16)")
    parser.add_argument("--eval-episodes", type=int, default=20, help="held-out evaluation episodes per policy (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="offset of every seed range (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, help="scripted demonstrator noise (default 0)")
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: the task's)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the learned policies on the robot (0 = greedy; default 1.0)")
    parser.add_argument("--steps-after-success", type=int, default=8,
                        help="steps recorded past a success in training episodes, for the reward model (default 8)")
    parser.add_argument("--bc-steps", type=int, help="behavior-cloning steps (default: the task's base recipe, 600 for lift)")
    parser.add_argument("--vae-steps", type=int, help=f"frame autoencoder steps (default: the --wm-config value, "
                        f"else {DEMO_VAE_STEPS})")
    parser.add_argument("--wm-steps", type=int, default=1200, help="world-model pretraining steps (default 1200)")
    parser.add_argument("--align-steps", type=int, default=300, help="world-model alignment steps (default 300)")
    parser.add_argument("--reward-steps", type=int, default=600, help="reward-model steps (default 600)")
    parser.add_argument("--grpo-iterations", type=int, default=3, help="GRPO iterations (default 3)")
    parser.add_argument("--bc-config", help="JSON TrainConfig for behavior cloning")
    parser.add_argument("--wm-config", help="JSON WorldModelTrainConfig (default: the 64 px simulator recipe)")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig (default for lift: the shipped lift config)")
    parser.add_argument("--grpo-config", help="JSON WMPOConfig (default: the task's shipped config, e.g. lift_wmpo.json)")
    parser.add_argument("--direct", action="store_true",
                        help="run learned-policy episodes straight in the simulator (no ROS graph; faster)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: remove what earlier demo runs wrote in --out (nothing else)")


def _check(args: argparse.Namespace) -> str | None:
    for name in ("demos", "rollouts", "eval_episodes"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    for name in ("bc_config", "wm_config", "reward_config", "grpo_config"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            return f"--{name.replace('_', '-')} {value}: no such file"
        if value:
            setattr(args, name, str(Path(value).resolve()))
    return None


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


def main(args: argparse.Namespace) -> int:
    """Run the stages not finished yet, then print the before/after table."""
    if (problem := _check(args)) is not None:
        print(f"wmpo demo: {problem}", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    if args.fresh and (problem := remove_demo_outputs(out)) is not None:
        print(f"wmpo demo: --fresh: {problem}", file=sys.stderr)
        return 2
    mark_demo_folder(out)
    plan = [(s, (out / s.name / MARKER).is_file(), s.estimate(args)) for s in STAGES]
    todo = sum(est for _, done, est in plan if not done)
    print(f"wmpo demo: {len(STAGES)} stages, about {todo / 60:.0f} min left on a 2-core CPU; output in {out}/")
    for i, (s, done, est) in enumerate(plan, 1):
        took = f"done in {read_json(out / s.name / MARKER).get('seconds', 0):.0f} s, reused" if done else f"~{est:.0f} s"
        print(f"  {i:2d}. {s.title} ({took})")
    t_start = time.monotonic()
    for i, (stage, _, est) in enumerate(plan, 1):
        elapsed = time.monotonic() - t_start
        header = f"\n[{i}/{len(STAGES)}] {stage.title}  (estimate ~{est:.0f} s; {elapsed / 60:.1f} min elapsed)"
        try:
            run_stage(out / stage.name, stage.name, lambda d, s=stage: s.run(args, out),
                      say=lambda text, h=header: print(h if text.endswith("...") else text, flush=True))
        except (StageError, OSError, ValueError) as exc:
            print(f"wmpo demo: stage '{stage.name}' failed: {exc}\n(re-run the same command to continue from this "
                  "stage)", file=sys.stderr)
            return 1
    report = read_json(out / "report" / MARKER)
    if all(done for _, done, _ in plan):
        print_table(read_json(Path(report["report_json"]))["versions"])  # the table of the finished run
    print(f"\nwmpo demo: finished in {(time.monotonic() - t_start) / 60:.1f} min; report in {report['report_html']} "
          f"and {report['report_json']}")
    return 0


def stage_results(out: Path) -> dict[str, Any]:
    """Markers of the finished stages of a demo folder, by stage name."""
    return {s.name: read_json(out / s.name / MARKER) for s in STAGES if (out / s.name / MARKER).is_file()}
