"""The steps of WMPO's pipeline, defined once: collect, link data, world model, reward + threshold,
GRPO, gate, export, push, evaluate. `wmpo demo`, `wmpo loop` and `wmpo compare` are compositions
of these (wmpo_core.demo, wmpo_core.loop, wmpo_core.pipeline.compare).

Every ``*_step`` function returns a :class:`~wmpo_core.pipeline.runner.Step`: its folder (whose
``stage.json`` marks it finished), its ``inputs`` as data and the keys its marker holds. Training
runs `wmpo` commands in a subprocess, so a step is the same whichever composition runs it, and
what the recipe (:mod:`wmpo_core.pipeline.recipe`) says reaches the command lines here only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import StageError, read_json, write_json_atomic
from wmpo_core.pipeline.guard import check_simulator
from wmpo_core.pipeline.recipe import Recipe
from wmpo_core.pipeline.runner import MARKER, Step, last_json_line, run_wmpo
from wmpo_core.stats import paired_outcomes

KEY_NAME = "wmpo_policy_signing.pem"
# Below this AUC on imagined replays the reward step warns that imagination barely carries the outcome (the
# demo runs that gained calibrated at 1.0; those at 0.6-0.7 did not move the policy; docs/results.md).
WEAK_IMAGINED_AUC = 0.75


# ============================================================================ collect
def list_complete_episodes(folder: Path) -> list[dict[str, Any]]:
    """Readable, finished episodes of ``folder`` as dicts (id, success, policy_version, steps, path, seed)."""
    from wmpo_core.data.episodes import list_episodes

    if not folder.is_dir():
        return []
    return [{"episode_id": e.episode_id, "success": e.success, "policy_version": e.policy_version,
             "steps": e.steps, "path": str(e.path), "seed": e.seed}
            for e in list_episodes(folder) if not isinstance(e, Exception) and e.status == "complete"]


def record_in_sim(policy: str, task: str, count: int, first_seed: int, out: Path, *,
                  max_steps: int | None = None, noise: float = 0.0, temperature: float = 0.0,
                  steps_after_success: int = 0, cameras: Sequence[str] | None = None,
                  jobs: int = 1) -> list[dict[str, Any]]:
    """Episodes of ``policy`` (package dir or ``scripted``) straight from the simulator, one bag each.

    The bags follow the recorder's schema (wmpo_core.data.sim_bags), without ROS in the loop.
    Seeds ``first_seed .. first_seed + count - 1``; ``cameras`` rendered (None: agentview); ``jobs``
    simulator processes.
    Returns one row per episode.
    """
    from wmpo_core.data.bag import read_metadata
    from wmpo_core.data.sim_bags import collect_sim_episodes

    check_simulator("recording in the simulator")
    paths = collect_sim_episodes(task, count, out, seed=first_seed, noise=noise, policy=policy, max_steps=max_steps,
                                 temperature=temperature if policy != "scripted" else 0.0,
                                 steps_after_success=steps_after_success, cameras=tuple(cameras or ("agentview",)),
                                 jobs=jobs)
    rows = []
    for path in paths:
        meta = read_metadata(path)
        rows.append({"episode_id": meta.episode_id, "path": str(path), "seed": meta.seed,
                     "success": bool(meta.success), "policy_version": meta.policy_version})
    return rows


def record_through_ros(policy: str, task: str, count: int, first_seed: int, out: Path, *,
                       max_steps: int | None = None, log: Path | None = None,
                       public_key: Path | None = None, noise: float | None = None,
                       temperature: float | None = None, extra_steps: int | None = None,
                       cameras: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`wmpo record --sim --policy POLICY`: the simulated robot through the ROS 2 graph.

    The policy node loads only packages signed by a key it trusts: ``public_key``. ``cameras``:
    the cameras rendered, recorded and read by the policy (None: the graph file's).
    """
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
    if cameras:
        args += ["--cameras", ",".join(cameras)]
    run_wmpo(*args, log=log)
    return list_complete_episodes(out)


@dataclass(frozen=True)
class Collection:
    """What a collect step records: ``count`` episodes of ``policy`` from seed ``first_seed`` on."""

    policy: str
    task: str
    count: int
    first_seed: int
    direct: bool = False  # straight in the simulator (no ROS graph)
    max_steps: int | None = None
    temperature: float = 0.0
    steps_after_success: int | None = None  # recorded past a success (for the reward model)
    noise: float | None = None  # scripted demonstrator noise
    public_key: Path | None = None  # the key the graph's policy node trusts
    cameras: tuple[str, ...] | None = None  # rendered and recorded (None: the graph file's; direct: agentview)
    jobs: int = 1  # simulator processes (direct only)


def collect(c: Collection, folder: Path) -> dict[str, Any]:
    """Record the collection into ``folder/episodes`` (afresh); the summary of what was recorded."""
    out = folder / "episodes"
    if out.exists():
        shutil.rmtree(out)  # a half-finished earlier attempt: record the step afresh
    if c.direct:
        print(f"    collecting {c.count} episodes directly in the simulator (no ROS graph"
              f"{f', {c.jobs} processes' if c.jobs > 1 else ''})", flush=True)
        rows = record_in_sim(c.policy, c.task, c.count, c.first_seed, out, max_steps=c.max_steps,
                             noise=c.noise or 0.0, temperature=c.temperature,
                             steps_after_success=c.steps_after_success or 0, cameras=c.cameras, jobs=c.jobs)
    else:
        print(f"    collecting {c.count} episodes through the ROS 2 graph (wmpo record --sim)", flush=True)
        rows = record_through_ros(c.policy, c.task, c.count, c.first_seed, out, max_steps=c.max_steps,
                                  log=folder / "commands.log", public_key=c.public_key, noise=c.noise,
                                  temperature=c.temperature, extra_steps=c.steps_after_success,
                                  cameras=c.cameras)
    if not rows:
        raise StageError(f"{out}: no complete episode was collected")
    successes = sum(1 for r in rows if r.get("success"))
    return {"episodes_dir": str(out), "episodes": len(rows), "successes": successes,
            "success_rate": successes / len(rows), "policy": c.policy, "first_seed": c.first_seed,
            "seeds": list(range(c.first_seed, c.first_seed + c.count)),
            "evaluated_via": "simulator (direct)" if c.direct else "ROS 2 graph"}


def collect_step(name: str, title: str, folder: Path, c: Collection) -> Step:
    """Record episodes (:func:`collect`)."""
    return Step(name, title, folder, lambda d: collect(c, d), inputs={"collection": c},
                outputs=("episodes_dir", "episodes", "successes", "seeds"))


# ============================================================================ link data
def link_episodes(sources: Sequence[Path], out: Path) -> int:
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
                raise StageError(f"{ep}: episode id {ep.name} appears twice in the training data")
            link.symlink_to(ep.resolve(), target_is_directory=True)
            n += 1
    return n


def link_step(folder: Path, sources: Sequence[Path]) -> Step:
    """One folder of links to every training episode (``folder/episodes``), made once per plan."""
    def run(d: Path) -> dict[str, Any]:
        n = link_episodes(sources, d / "episodes")
        return {"episodes_dir": str(d / "episodes"), "episodes": n, "sources": [str(s) for s in sources]}

    return Step("data", "link the training episodes", folder, run, inputs={"sources": list(sources)},
                outputs=("episodes_dir", "episodes"))


def data_dir(folder: Path) -> Path:
    """The linked episodes of a :func:`link_step` in ``folder``."""
    return folder / "episodes"


# ============================================================================ world model
def world_model_config(recipe: Recipe, dest: Path, init: Path | None = None, vae_steps: int | None = None) -> Path:
    """The training config of a world-model run: an alignment continues the config of the run it
    starts from (its camera, frame size and settings), a pretraining takes the recipe's."""
    own = init / "train_config.json" if init is not None else None
    if own is not None and own.is_file():
        return own
    return recipe.write_world_model_config(dest, vae_steps)


def train_world_model(episodes: Sequence[Path], run: Path, recipe: Recipe, *, init: Path | None = None,
                      steps: int | None = None, vae_steps: int | None = None, log: Path | None = None,
                      config_path: Path | None = None) -> dict[str, Any]:
    """`wmpo train-world-model`: pretrain (no ``init``) or align from ``init`` on ``episodes``; resumes."""
    config = world_model_config(recipe, config_path or run.parent / "config.json", init, vae_steps)
    args = ["train-world-model", "--episodes", *map(str, episodes), "--out", str(run), "--config", str(config)]
    if init is not None:
        args += ["--init", str(init)]
    if steps:
        args += ["--steps", str(steps)]
    summary = last_json_line(run_wmpo(*args, log=log, capture=True).stdout, "wmpo train-world-model")
    return {"run": str(run), "init": str(init) if init else None, "config": str(config),
            "final_loss": summary.get("final_loss")}


def world_model_step(folder: Path, episodes: Sequence[Path], recipe: Recipe, *, init: Path | None = None,
                     steps: int | None = None, run: Path | None = None) -> Step:
    """Pretrain or align (``init``) the world model on ``episodes`` into ``run`` (default ``folder/run``)."""
    from wmpo_core.data.bag import episode_dirs

    target = run or folder / "run"

    def go(d: Path) -> dict[str, Any]:
        n = sum(len(episode_dirs(e)) for e in episodes)
        return {**train_world_model(episodes, target, recipe, init=init, steps=steps, log=d / "commands.log",
                                    config_path=d / "config.json"), "episodes": n}

    return Step("world_model", "world model" + (" (aligned)" if init else ""), folder, go,
                inputs={"episodes": list(episodes), "init": init, "steps": steps, "recipe": recipe,
                        "config": recipe.world_model_config, "camera": recipe.camera},
                outputs=("run", "init", "episodes", "final_loss"))


# ============================================================================ reward + threshold
def train_reward_command(inputs: dict[str, Any], run: Path, config: Path | None) -> list[str]:
    """The `wmpo train-reward` arguments of a reward step's ``inputs``."""
    args = ["train-reward", "--episodes", str(inputs["episodes"]), "--out", str(run)]
    if config is not None:
        args += ["--config", str(config)]
    if inputs.get("steps"):
        args += ["--steps", str(inputs["steps"])]
    if inputs["recipe"].reward_on_imagined:
        args += ["--world-model", str(inputs["world_model"])]
    return args


def train_calibrated_reward(inputs: dict[str, Any], out: Path, log: Path | None = None) -> dict[str, Any]:
    """:func:`train_reward_and_threshold`, then, when the recipe names a success-head config, the world
    model's success head on the same episodes (``out/success_head``; GRPO then scores with it)."""
    result = train_reward_and_threshold(inputs, out, log)
    recipe: Recipe = inputs["recipe"]
    if not recipe.success_head_config:
        return result
    head = out / "success_head"
    if head.exists():
        shutil.rmtree(head)  # no resume: a half-trained head is retrained
    proc = run_wmpo("train-success-head", "--world-model", str(inputs["world_model"]), "--episodes",
                    str(inputs["episodes"]), "--out", str(head), "--config", recipe.success_head_config,
                    log=log, capture=True)
    summary = last_json_line(proc.stdout, "wmpo train-success-head")
    return result | {"success_head": str(head), "success_head_tau": summary["tau"],
                     "success_head_validation": summary["validation"]}


def train_reward_and_threshold(inputs: dict[str, Any], out: Path, log: Path | None = None) -> dict[str, Any]:
    """`wmpo train-reward` on the episodes of ``inputs``, then `wmpo calibrate-reward` in its world model.

    The recipe says whether the classifier also learns from imagined replays. Its success
    threshold is then re-chosen on imagined replays of labelled episodes, because GRPO scores
    imagined video and those scores run higher or lower than real video's: replays of
    ``calibrate_on`` (the policy's own episodes, whose imagined look is what GRPO will score) when
    the recipe says ``policy`` and those hold both outcomes, else of every training episode. Writes
    ``out/run`` (trained) and ``out/calibrated``; returns the summary with ``run`` = the model GRPO
    should use. With one outcome only there is nothing to calibrate against: ``run`` is the trained
    model and the summary says why.
    """
    recipe: Recipe = inputs["recipe"]
    data, world_model = Path(inputs["episodes"]), Path(inputs["world_model"])
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)  # train-reward has no resume: a half-trained model is retrained
    config = recipe.write_reward_config(out / "config.json")
    summary = last_json_line(run_wmpo(*train_reward_command(inputs, run, config), log=log, capture=True).stdout,
                             "wmpo train-reward")
    result: dict[str, Any] = {"trained": str(run), "on_imagined": recipe.reward_on_imagined,
                              **{k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)}}

    def outcomes(folders: list[Path]) -> tuple[int, int]:
        rows = [r for f in folders for r in list_complete_episodes(f)]
        return sum(1 for r in rows if r["success"]), len(rows)

    folders = [Path(f) for f in inputs.get("calibrate_on") or []] if recipe.calibrate_on == "policy" else []
    if folders:
        successes, total = outcomes(folders)
        least = recipe.calibration_min_outcomes
        if min(successes, total - successes) < least:
            print(f"    calibration: {successes} of {total} of the policy's episodes succeeded (fewer than {least} of "
                  "each outcome); calibrating on all training episodes instead", flush=True)
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
                    *map(str, folders), "--out", str(calibrated), "--rule", recipe.calibration_rule, "--json",
                    log=log, capture=True)
    cal = last_json_line(proc.stdout, "wmpo calibrate-reward")
    if cal["auc"] < WEAK_IMAGINED_AUC:
        print(f"    warning: the reward ranks the {cal['episodes']} imagined replays at AUC {cal['auc']:.2f} (threshold "
              f"{cal['tau_before']:.3g} -> {cal['tau']:.3g}): imagination barely shows the outcome, so GRPO's reward "
              "is mostly noise (docs/results.md, the diagnostic ladder)", flush=True)
    return result | {"run": str(calibrated), "tau_real": cal["tau_before"], "tau": cal["tau"], "rule": cal["rule"],
                     "imagined_f1_before": cal["f1_before"], "imagined_f1": cal["f1"], "imagined_auc": cal["auc"],
                     "calibration_episodes": cal["episodes"], "calibrated_on": [str(f) for f in folders]}


def reward_step(folder: Path, episodes: Path, world_model: Path, recipe: Recipe, *, steps: int | None = None,
                calibrate_on: Sequence[Path] = ()) -> Step:
    """Train the reward model on ``episodes`` (and, if the recipe says so, their imagined replays in
    ``world_model``); re-choose its threshold on imagined replays (:func:`train_calibrated_reward`)."""
    inputs = {"episodes": episodes, "world_model": world_model, "calibrate_on": list(calibrate_on), "steps": steps,
              "recipe": recipe}
    return Step("reward", "reward model and its threshold", folder,
                lambda d: train_calibrated_reward(inputs, d, log=d / "commands.log"), inputs=inputs,
                outputs=("run", "trained", "tau", "calibrated_on", "success_head"))


def reward_model_of(path: Path | str) -> str:
    """The reward model a GRPO step uses: a reward step's chosen ``run``, or a given model directory."""
    marker = Path(path) / MARKER
    return str(read_json(marker)["run"]) if marker.is_file() else str(path)


def reward_args_of(path: Path | str) -> list[str]:
    """`wmpo grpo`'s reward arguments for a reward step's folder (its success head when it trained one, else its
    chosen model) or a given reward-model directory."""
    marker = Path(path) / MARKER
    head = read_json(marker).get("success_head") if marker.is_file() else None
    return ["--success-head", str(head)] if head else ["--reward", reward_model_of(path)]


# ============================================================================ GRPO
def grpo_step(folder: Path, policy: str, world_model: Path, reward: Path, episodes: Sequence[Path], recipe: Recipe,
              *, budget: int | Callable[[], int], iterations: int | None = None, run: Path | None = None,
              seed_offset: int = 0) -> Step:
    """`wmpo grpo` in imagination from ``policy``: the candidate is ``run/policy`` (``run``: default
    ``folder/run``). ``reward``: a reward step's folder (its chosen model) or a reward-model directory.
    ``budget``: the real trajectories behind the models (recorded in the manifest), or a function that
    reads it once earlier steps ran. ``seed_offset`` is added to the config's sampling seed (a later
    round of :func:`refresh_steps` does not repeat the first round's draws)."""
    target = run or folder / "run"

    def go(d: Path) -> dict[str, Any]:
        from wmpo_core.registry.package import read_package_manifest

        args = ["grpo", "--policy", str(policy), "--world-model", str(world_model), *reward_args_of(reward),
                "--episodes", *map(str, episodes), "--out", str(target), "--budget", str(budget() if callable(budget) else budget), "--quiet"]
        if seed_offset:
            config = recipe.grpo_config_data()
            config["seed"] = int(config.get("seed", 0)) + seed_offset
            write_json_atomic(d / "grpo_config.json", config)
            args += ["--config", str(d / "grpo_config.json")]
        elif recipe.grpo_config:
            args += ["--config", recipe.grpo_config]
        if iterations:
            args += ["--iterations", str(iterations)]
        candidate = target / "policy"
        if not (candidate / "manifest.json").is_file():  # else: trained, only the marker was missing
            run_wmpo(*args, log=d / "commands.log")
        manifest = read_package_manifest(candidate)
        return {"run": str(target), "candidate": str(candidate), "version": manifest.get("version"),
                "parent": manifest.get("parent"), "log": str(target / "log.jsonl")}

    return Step("grpo", "GRPO in imagination", folder, go,
                inputs={"policy": policy, "world_model": world_model, "reward": reward, "episodes": list(episodes),
                        "budget": budget, "iterations": iterations, "recipe": recipe, "config": recipe.grpo_config,
                        "seed_offset": seed_offset},
                outputs=("run", "candidate", "version", "parent", "log"))


def split_iterations(iterations: int, rounds: int) -> list[int]:
    """GRPO iterations per round, as even as they go (the first rounds take the remainder); a ValueError when
    there are fewer iterations than rounds."""
    if rounds < 1 or iterations < rounds:
        raise ValueError(f"{iterations} GRPO iteration(s) cannot be split over {rounds} round(s)")
    return [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]


def refresh_steps(folder: Path, policy: str, world_model: Path, data_sources: Sequence[Path],
                  policy_rollouts: Sequence[Path], recipe: Recipe, collection: Collection, *,
                  budget: int, iterations: int, round_index: int, reward_steps: int | None = None) -> list[Step]:
    """One later round of GRPO in rounds (``recipe.grpo_rounds``), in ``folder``: ``collection`` (rollouts of
    ``policy``, the previous round's candidate) into ``folder/collect``; the world model aligned from
    ``world_model`` on ``policy_rollouts`` and the new ones (and the other ``data_sources`` with the recipe's
    ``align_on: "all"``; ``recipe.refresh_align_steps``); every episode
    (``data_sources`` and the new ones) linked into ``folder/data``; the reward model retrained on them and
    its threshold re-chosen on imagined replays of all policy rollouts; GRPO from ``policy`` for
    ``iterations`` with the sampling seed moved by ``round_index``. ``budget``: the real trajectories
    before this round (the new rollouts are added)."""
    new = folder / "collect" / "episodes"
    rollouts = [*policy_rollouts, new]
    wm = folder / "world_model"
    data = data_dir(folder / "data")
    return [
        collect_step("collect", f"round {round_index + 1}: rollouts of the round-{round_index} policy",
                     folder / "collect", collection),
        world_model_step(wm, recipe.alignment_episodes(rollouts, [d for d in data_sources if d not in rollouts]),
                         recipe, init=world_model, steps=recipe.refresh_align_steps, run=wm / "run"),
        link_step(folder / "data", [*data_sources, new]),
        reward_step(folder / "reward", data, wm / "run", recipe, steps=reward_steps, calibrate_on=rollouts),
        grpo_step(folder / "grpo", policy, wm / "run", folder / "reward", [data], recipe,
                  budget=budget + collection.count, iterations=iterations, seed_offset=round_index),
    ]


# ============================================================================ keys, export, push
def make_keys(folder: Path, log: Path | None = None) -> Path:
    """A signing key pair in ``folder`` (made unless its private key is there); the private key."""
    if not (folder / KEY_NAME).is_file():
        if folder.exists():
            shutil.rmtree(folder)  # a keygen cut short
        run_wmpo("keygen", "--out", str(folder), log=log)
    return folder / KEY_NAME


def public_key_of(private_key: Path) -> Path:
    """The public key beside a private key made by `wmpo keygen`."""
    return private_key.with_name(private_key.name.removesuffix(".pem") + ".pub.pem")


def export_package(source: str | Path, out: Path, key: Path, *, parent: str | None = None,
                   log: Path | None = None) -> dict[str, Any]:
    """`wmpo export`: sign ``source`` into ``out`` (parent ``parent``); an export cut short is redone,
    a signed one from an interrupted step is kept. Returns the package's manifest."""
    from wmpo_core.registry.package import read_package_manifest

    if out.exists() and not (out / "signature.json").is_file():
        shutil.rmtree(out)
    if not out.exists():
        args = ["export", str(source), "--out", str(out), "--key", str(key)]
        if parent is not None:
            args += ["--parent", parent]
        run_wmpo(*args, log=log)
    return read_package_manifest(out)


def push_package(package: Path, target: str, public_key: Path, *, node: str | None = None,
                 timeout: float | None = None, log: Path | None = None) -> tuple[str, str]:
    """`wmpo push` to a robot's policy folder (DIR or HOST:DIR), and its policy ``node`` asked to load it;
    (installed path, the command's output)."""
    from wmpo_core.registry.package import read_package_manifest

    args = ["push", str(package), "--to", target, "--public-key", str(public_key)]
    args += ["--node", node] if node else ["--no-load"]
    if timeout is not None:
        args += ["--timeout", f"{timeout:g}"]
    proc = run_wmpo(*args, log=log, capture=True)
    version = read_package_manifest(package)["version"]
    installed = f"{target}/{version}" if ":" in target else str(Path(target) / version)
    return installed, proc.stdout.strip()


# ============================================================================ evaluate and gate
def evaluate(policy: str, task: str, episodes: int, first_seed: int, *, max_steps: int | None = None,
             log: Path | None = None, temperature: float = 0.0, jobs: int = 1) -> dict[str, Any]:
    """`wmpo eval --json` of ``policy`` on seeds ``first_seed ..`` (sampled at ``temperature``, in ``jobs``
    simulator processes; the report does not depend on it); its JSON report."""
    check_simulator(f"wmpo eval --policy {policy}")
    args = ["eval", "--policy", policy, "--task", task, "--episodes", str(episodes), "--seed", str(first_seed),
            "--temperature", str(temperature), "--json"]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    if jobs > 1:
        args += ["--jobs", str(jobs)]
    proc = run_wmpo(*args, log=log, capture=True)
    return last_json_line(proc.stdout, f"wmpo eval --policy {policy}")


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
    try:
        paired = paired_outcomes(cur, cand)
    except ValueError as exc:
        raise StageError(f"gate: the two evaluations must cover the same start states: {exc}") from exc
    b, c, p = int(paired["wins"]), int(paired["losses"]), float(paired["p_one_sided"])
    accept = b > c and p <= alpha
    if accept:
        reason = f"candidate better: solves {b} start state(s) the current policy fails, loses {c}; p = {p:.3g} <= {alpha}"
    elif b <= c:
        reason = f"candidate not better: wins {b}, loses {c} of {len(cur)} shared start states"
    else:
        reason = f"improvement not significant: wins {b}, loses {c}; p = {p:.3g} > alpha {alpha}"
    return GateDecision(accept, reason, sum(cur.values()), sum(cand.values()), len(cur), b, c, p, alpha)


def gate_in_sim(current: str, candidate: str, task: str, episodes: int, first_seed: int, alpha: float, *,
                max_steps: int | None = None, temperature: float = 0.0, log: Path | None = None) -> dict[str, Any]:
    """Evaluate both policies on the same held-out start states and apply :func:`gate_decision`."""
    from dataclasses import asdict

    cur = evaluate(current, task, episodes, first_seed, max_steps=max_steps, log=log, temperature=temperature)
    cand = evaluate(candidate, task, episodes, first_seed, max_steps=max_steps, log=log, temperature=temperature)
    decision = gate_decision(cur["per_episode"], cand["per_episode"], alpha)
    print(f"    gate: {decision.reason}", flush=True)
    slim = ("policy", "success_rate", "ci95", "episodes", "successes", "seeds")
    return {"decision": asdict(decision), "current": {k: cur.get(k) for k in slim},
            "candidate": {k: cand.get(k) for k in slim}}
