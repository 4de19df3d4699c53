"""The pipeline's steps are defined once and the recipe reaches `wmpo demo`, `wmpo loop` and `wmpo compare`.

No training runs here: each command's step plan is built from its own command line, and the reward
step's command line is read off it. The commands' options are compared with the ones they had
before the pipeline existed (captured from `wmpo <cmd> --help`'s parser then).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wmpo_core.cli import build_parser, main
from wmpo_core.pipeline.recipe import Recipe, load_recipe, recipe_file, recipe_from_args
from wmpo_core.pipeline.steps import train_reward_command

# Every option of the three commands before wmpo_core.pipeline: flags, dest, default, required, type,
# choices, nargs, action.
OPTIONS_BEFORE = {
    "demo": [
        ('--align-steps', 'align_steps', '300', False, 'int', 'None', None, '_StoreAction'),
        ('--bc-config', 'bc_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--bc-steps', 'bc_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--demos', 'demos', '40', False, 'int', 'None', None, '_StoreAction'),
        ('--direct', 'direct', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--eval-episodes', 'eval_episodes', '20', False, 'int', 'None', None, '_StoreAction'),
        ('--fresh', 'fresh', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--grpo-config', 'grpo_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--grpo-iterations', 'grpo_iterations', '3', False, 'int', 'None', None, '_StoreAction'),
        ('--help,-h', 'help', 'SUPPRESS', False, 'None', 'None', 0, '_HelpAction'),
        ('--max-steps', 'max_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--noise', 'noise', '0.0', False, 'float', 'None', None, '_StoreAction'),
        ('--out', 'out', "PosixPath('demo_out')", False, 'Path', 'None', None, '_StoreAction'),
        ('--reward-config', 'reward_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--reward-steps', 'reward_steps', '600', False, 'int', 'None', None, '_StoreAction'),
        ('--rollouts', 'rollouts', '16', False, 'int', 'None', None, '_StoreAction'),
        ('--seed', 'seed', '0', False, 'int', 'None', None, '_StoreAction'),
        ('--steps-after-success', 'steps_after_success', '8', False, 'int', 'None', None, '_StoreAction'),
        ('--task', 'task', "'lift'", False, 'None', 'None', None, '_StoreAction'),
        ('--temperature', 'temperature', '1.0', False, 'float', 'None', None, '_StoreAction'),
        ('--vae-steps', 'vae_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--wm-config', 'wm_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--wm-steps', 'wm_steps', '1200', False, 'int', 'None', None, '_StoreAction'),
    ],
    "loop": [
        ('--canary-alpha', 'canary_alpha', '0.05', False, 'float', 'None', None, '_StoreAction'),
        ('--canary-max-pairs', 'canary_max_pairs', '30', False, 'int', 'None', None, '_StoreAction'),
        ('--canary-odds-ratio', 'canary_odds_ratio', '3.0', False, 'float', 'None', None, '_StoreAction'),
        ('--collect-direct', 'collect_direct', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--collect-timeout', 'collect_timeout', '3600.0', False, 'float', 'None', None, '_StoreAction'),
        ('--demos', 'demos', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--episodes-from', 'episodes_from', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--episodes-per-iter', 'episodes_per_iter', '8', False, 'int', 'None', None, '_StoreAction'),
        ('--gate-alpha', 'gate_alpha', '0.05', False, 'float', 'None', None, '_StoreAction'),
        ('--gate-episodes', 'gate_episodes', '20', False, 'int', 'None', None, '_StoreAction'),
        ('--grpo-config', 'grpo_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--grpo-iterations', 'grpo_iterations', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--help,-h', 'help', 'SUPPRESS', False, 'None', 'None', 0, '_HelpAction'),
        ('--iterations', 'iterations', 'None', True, 'int', 'None', None, '_StoreAction'),
        ('--key', 'key', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--load-node', 'load_node', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--max-steps', 'max_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--no-screen', 'screen', 'True', False, 'None', 'None', 0, '_StoreFalseAction'),
        ('--out', 'out', 'None', True, 'Path', 'None', None, '_StoreAction'),
        ('--policy', 'policy', 'None', True, 'None', 'None', None, '_StoreAction'),
        ('--push-to', 'push_to', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--reward-config', 'reward_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--reward-steps', 'reward_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--robot', 'robot', "'sim'", False, 'None', "('sim', 'ros')", None, '_StoreAction'),
        ('--screen-starts', 'screen_starts', '4', False, 'int', 'None', None, '_StoreAction'),
        ('--steps-after-success', 'steps_after_success', '8', False, 'int', 'None', None, '_StoreAction'),
        ('--stop-after', 'stop_after', 'None', False, 'None', "('collect', 'world_model', 'reward', 'grpo', 'gate', 'publish')", None, '_StoreAction'),
        ('--task', 'task', "'lift'", False, 'None', 'None', None, '_StoreAction'),
        ('--temperature', 'temperature', '1.0', False, 'float', 'None', None, '_StoreAction'),
        ('--wm-config', 'wm_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--wm-steps', 'wm_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--world-model', 'world_model', 'None', False, 'None', 'None', None, '_StoreAction'),
    ],
    "compare": [
        ('--align-steps', 'align_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--base', 'base', 'None', True, 'None', 'None', None, '_StoreAction'),
        ('--budget', 'budget', 'None', True, 'int', 'None', None, '_StoreAction'),
        ('--demos', 'demos', 'None', False, 'None', 'None', '+', '_StoreAction'),
        ('--dpo', 'dpo', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--dpo-config', 'dpo_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--episodes', 'episodes', '100', False, 'int', 'None', None, '_StoreAction'),
        ('--grpo-sim', 'grpo_sim', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--grpo-sim-config', 'grpo_sim_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--help,-h', 'help', 'SUPPRESS', False, 'None', 'None', 0, '_HelpAction'),
        ('--jobs', 'jobs', '1', False, 'int', 'None', None, '_StoreAction'),
        ('--json', 'json', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--max-steps', 'max_steps', 'None', False, 'int', 'None', None, '_StoreAction'),
        ('--no-align', 'no_align', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--quiet', 'quiet', 'False', False, 'None', 'None', 0, '_StoreTrueAction'),
        ('--reward', 'reward', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--reward-config', 'reward_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--seed-offset', 'seed_offset', '0', False, 'int', 'None', None, '_StoreAction'),
        ('--steps-after-success', 'steps_after_success', '8', False, 'int', 'None', None, '_StoreAction'),
        ('--task', 'task', 'None', True, 'None', 'None', None, '_StoreAction'),
        ('--temperature', 'temperature', '1.0', False, 'float', 'None', None, '_StoreAction'),
        ('--validation-episodes', 'validation_episodes', '50', False, 'int', 'None', None, '_StoreAction'),
        ('--wmpo', 'wmpo', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--wmpo-config', 'wmpo_config', 'None', False, 'None', 'None', None, '_StoreAction'),
        ('--work', 'work', 'None', False, 'Path', 'None', None, '_StoreAction'),
        ('--world-model', 'world_model', 'None', False, 'None', 'None', None, '_StoreAction'),
    ],
}
# Options added since, on purpose: the task recipe file (wmpo_core/pipeline/recipes/<task>.json by default).
ADDED = {cmd: [("--recipe", "recipe", "None", False, "None", "None", None, "_StoreAction")]
         for cmd in ("demo", "loop", "compare")}
# The demo's held-out evaluation in the simulator (the paired test's count) and its demonstrations straight in
# the simulator, added with the demo's own recipe; 250 states since the gain of its GRPO proved too small for 100
# to resolve (docs/results.md).
ADDED["demo"] += [("--ros-demos", "ros_demos", "False", False, "None", "None", 0, "_StoreTrueAction"),
                  ("--held-out", "held_out", "250", False, "int", "None", None, "_StoreAction")]
# Defaults changed on purpose with the demo's recipe (lift_workspace.json, measured in docs/results.md): fewer
# episodes through the graph (the held-out evaluation decides), 16 steps past success, 6 GRPO iterations.
CHANGED = {"demo": {"--eval-episodes": "4", "--steps-after-success": "16", "--grpo-iterations": "6"}}
# The live watch of a robot run (wmpo_core.robot_loop.LiveWatch), added after the pipeline refactor.
ADDED["loop"] += [("--no-watch", "watch", "True", False, "None", "None", 0, "_StoreFalseAction"),
                  ("--watch-threshold", "watch_threshold", "5.0", False, "float", "None", None, "_StoreAction")]
# Candidates trained elsewhere: the loop as the deployment's decider (the real-robot loop's end-to-end test).
ADDED["loop"] += [("--candidates", "candidates", "None", False, "None", "None", None, "_StoreAction")]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _options(command: str) -> list[tuple]:
    def type_name(t):
        return str(getattr(t, "__name__", t))

    return sorted((",".join(sorted(a.option_strings)), a.dest,
                   repr(a.default) if a.default is not argparse.SUPPRESS else "SUPPRESS", a.required,
                   type_name(a.type), repr(a.choices), a.nargs, type(a).__name__)
                  for a in _subparser(command)._actions)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser(argv[0]).parse_args(list(argv))


@pytest.mark.parametrize("command", ["demo", "loop", "compare"])
def test_commands_keep_their_options(command: str) -> None:
    changed = CHANGED.get(command, {})
    before = [(r[0], r[1], changed.get(r[0], r[2]), *r[3:]) for r in OPTIONS_BEFORE[command]]
    assert _options(command) == sorted([*before, *ADDED[command]])
    shown = subprocess.run([sys.executable, "-m", "wmpo_core.cli", command, "--help"], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    for row in OPTIONS_BEFORE[command]:
        assert row[0].split(",")[0] in shown.stdout, row


def _plans(tmp_path: Path, recipe: Path | None) -> dict[str, dict]:
    """The reward, world-model and GRPO steps of demo, loop and compare, each built from its command line."""
    from wmpo_core import demo
    from wmpo_core.loop import Loop, config_from_args
    from wmpo_core.pipeline.compare import wmpo_plan

    extra = ["--recipe", str(recipe)] if recipe else []
    demo_out = tmp_path / "demo"
    demo_steps = demo.plan(_args("demo", "--out", str(demo_out), *extra), demo_out)
    loop_args = _args("loop", "--iterations", "1", "--out", str(tmp_path / "run"), "--policy", str(tmp_path), *extra)
    loop = Loop(config_from_args(loop_args))
    loop_steps = loop.plan(0, {"version": "v0", "package": str(tmp_path / "base")})
    cmp = _args("compare", "--task", "lift", "--budget", "8", "--base", str(tmp_path / "base"), "--world-model",
                str(tmp_path / "wm"), *extra)
    work = tmp_path / "cmp"
    # what main_compare hands train_missing: the recipe of its command line
    compare_steps = wmpo_plan(work, recipe_from_args(cmp), base=cmp.base, budget=cmp.budget,
                              rollouts=work / "rollouts" / "episodes", world_model=cmp.world_model,
                              align=not cmp.no_align, align_steps=cmp.align_steps, reward=cmp.reward, demos=cmp.demos)
    plans = {"demo": (demo_steps, demo_out / "world_model" / "aligned"),
             "loop": (loop_steps, tmp_path / "run" / "iter_000" / "world_model" / "run"),
             "compare": (compare_steps, work / "world_model")}
    out = {}
    for name, (steps, aligned) in plans.items():
        by_name = {s.name: s for s in steps}
        assert {"data", "world_model", "reward", "grpo"} <= set(by_name), name
        out[name] = {"steps": by_name, "aligned": aligned}
    return out


def _recipe_file(tmp_path: Path, **fields) -> Path:
    (tmp_path / "wm.json").write_text(json.dumps({"steps": 5, "image_size": 64}))
    (tmp_path / "reward.json").write_text(json.dumps({"steps": 3, "min_frame": 4}))
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"world_model_config": "wm.json", "reward_config": "reward.json", **fields}))
    return path


def test_one_recipe_setting_reaches_demo_loop_and_compare(tmp_path: Path) -> None:
    # The shipped lift recipe, with no --recipe: the same reward recipe (real video only), reward
    # config and GRPO config for loop and compare (they used the config defaults before); the demo's
    # own lift recipe (the zoomed workspace camera) otherwise the same reward recipe.
    from wmpo_core.demo import demo_recipe

    for name, plan in _plans(tmp_path / "shipped", None).items():
        reward = plan["steps"]["reward"]
        shipped = load_recipe("lift", demo_recipe("lift") if name == "demo" else None)
        assert reward.inputs["recipe"] == shipped, name
        if name == "demo":
            assert shipped.source.endswith("recipes/lift_workspace.json") and shipped.cameras == ("workspace",)
            assert shipped.reward_config.endswith("reward/configs/lift_final.json")
            assert shipped.align_on == "all"  # aligned on the rollouts alone, a demo's world model lost the lift
        else:
            assert shipped.source == str(recipe_file("lift")) and shipped.align_on == "policy"
            assert shipped.reward_config.endswith("reward/configs/lift.json")
        cmd = train_reward_command(reward.inputs, tmp_path / "run", None)
        assert "--world-model" not in cmd, (name, cmd)
        assert plan["steps"]["grpo"].inputs["config"] == shipped.grpo_config, name

    # One file changes the reward's training data, the camera and the configs of all three.
    recipe_path = _recipe_file(tmp_path, camera="workspace", reward_on_imagined=True, calibrate_on="all")
    for name, plan in _plans(tmp_path / "custom", recipe_path).items():
        steps = plan["steps"]
        recipe: Recipe = steps["reward"].inputs["recipe"]
        assert recipe.source == str(recipe_path) and recipe.reward_on_imagined and recipe.calibrate_on == "all", name
        # the reward trains on imagined replays in the world model the plan aligns
        written = recipe.write_reward_config(tmp_path / name / "reward_config.json")
        cmd = train_reward_command(steps["reward"].inputs, tmp_path / name / "run", written)
        assert cmd[cmd.index("--world-model") + 1] == str(plan["aligned"]), (name, cmd)
        assert cmd[cmd.index("--episodes") + 1] == str(steps["data"].folder / "episodes"), (name, cmd)
        assert json.loads(written.read_text()) == {"steps": 3, "min_frame": 4, "camera": "workspace"}, name
        # the world model sees the same camera, from the recipe's config
        wm_recipe: Recipe = steps["world_model"].inputs["recipe"]
        assert wm_recipe.world_model_config_data() == {"steps": 5, "image_size": 64, "camera": "workspace"}, name
        # GRPO reads the reward step's chosen model and the linked data
        assert steps["grpo"].inputs["reward"] == steps["reward"].folder, name
        assert steps["grpo"].inputs["episodes"] == [steps["data"].folder / "episodes"], name

    # The recipe's cameras reach every collection of the demo and the loop (rendered, recorded, read by the policy).
    recipe_path = _recipe_file(tmp_path, camera="workspace", cameras=["workspace"])
    plans = _plans(tmp_path / "cameras", recipe_path)
    demo_collections = [s.inputs["collection"] for s in plans["demo"]["steps"].values() if "collection" in s.inputs]
    assert len(demo_collections) == 2 and all(c.cameras == ("workspace",) for c in demo_collections)
    assert plans["demo"]["steps"]["eval_before"].inputs["cameras"] == ("workspace",)
    from wmpo_core.loop import Loop, config_from_args

    loop = Loop(config_from_args(_args("loop", "--iterations", "1", "--out", str(tmp_path / "cameras" / "run2"),
                                       "--policy", str(tmp_path), "--recipe", str(recipe_path))))
    assert loop.collection(0, {"version": "v0", "package": str(tmp_path / "base")}).cameras == ("workspace",)
    # and with no cameras in the recipe the graph file's own apply (no --cameras on the command line)
    (tmp_path / "nocams").mkdir()
    nocams = _recipe_file(tmp_path / "nocams", camera="agentview")
    assert all(s.inputs["collection"].cameras is None for s in _plans(tmp_path / "nocams", nocams)["demo"]["steps"].values()
               if "collection" in s.inputs)

    # The same file with the other reward recipe: none of the three trains on imagined replays.
    recipe_path = _recipe_file(tmp_path, camera="workspace", reward_on_imagined=False)
    for name, plan in _plans(tmp_path / "real_only", recipe_path).items():
        cmd = train_reward_command(plan["steps"]["reward"].inputs, tmp_path / "run", None)
        assert "--world-model" not in cmd, (name, cmd)


def test_align_on_chooses_the_alignment_data_of_demo_loop_compare_and_rounds(tmp_path: Path) -> None:
    # Behaviour alignment trains on the policy's rollouts ("policy") or on them and the demonstrations ("all"),
    # in each command that aligns: the demo, the loop (from --world-model), compare (--demos) and a later round.
    from wmpo_core import demo
    from wmpo_core.loop import Loop, config_from_args
    from wmpo_core.pipeline.compare import wmpo_plan
    from wmpo_core.pipeline.steps import Collection, refresh_steps

    with pytest.raises(ValueError, match="recipe align_on: expected one of"):
        load_recipe("lift", _recipe_file(tmp_path, align_on="demos"))
    for align_on in ("policy", "all"):
        folder = tmp_path / align_on
        folder.mkdir()
        recipe_path = _recipe_file(folder, align_on=align_on)
        recipe = load_recipe("lift", recipe_path)
        out = folder / "demo"
        demo_steps = {s.name: s for s in demo.plan(_args("demo", "--out", str(out), "--recipe", str(recipe_path)), out)}
        rollouts, demos = out / "record_rollouts" / "episodes", out / "record_demos" / "episodes"
        want = [rollouts, demos] if align_on == "all" else [rollouts]
        assert demo_steps["world_model"].inputs["align_on"] == want, align_on

        loop = Loop(config_from_args(_args("loop", "--iterations", "2", "--out", str(folder / "run"), "--policy",
                                           str(folder), "--demos", str(folder / "demos"), "--world-model",
                                           str(folder / "wm"), "--recipe", str(recipe_path))))
        for i in (0, 1):
            wm = {s.name: s for s in loop.plan(i, {"version": "v0", "package": str(folder / "base")})}["world_model"]
            collected = [loop.iter_dir(j) / "collect" / "episodes" for j in range(i + 1)]
            assert wm.inputs["init"] is not None
            assert wm.inputs["episodes"] == collected + ([folder / "demos"] if align_on == "all" else []), (i, align_on)
        # a loop that pretrains from scratch (no --world-model) trains on every episode whatever the setting
        scratch = Loop(config_from_args(_args("loop", "--iterations", "1", "--out", str(folder / "run0"), "--policy",
                                              str(folder), "--demos", str(folder / "demos"), "--recipe", str(recipe_path))))
        wm = {s.name: s for s in scratch.plan(0, {"version": "v0", "package": str(folder / "base")})}["world_model"]
        assert wm.inputs["init"] is None and wm.inputs["episodes"] == [folder / "run0" / "iter_000" / "data" / "episodes"]

        cmp_rollouts = folder / "cmp" / "rollouts" / "episodes"
        plan = {s.name: s for s in wmpo_plan(folder / "cmp", recipe, base=folder / "base", budget=8,
                                              rollouts=cmp_rollouts, world_model=folder / "wm",
                                              demos=[folder / "d1", folder / "d2"])}
        assert plan["world_model"].inputs["episodes"] == (
            [cmp_rollouts, folder / "d1", folder / "d2"] if align_on == "all" else [cmp_rollouts]), align_on

        new = folder / "r2" / "collect" / "episodes"
        collection = Collection(str(folder / "cand"), "lift", 8, 5, direct=True)
        steps = {s.name: s for s in refresh_steps(folder / "r2", str(folder / "cand"), folder / "wm", [demos, rollouts],
                                                  [rollouts], recipe, collection, budget=8, iterations=1,
                                                  round_index=1)}
        assert steps["world_model"].inputs["episodes"] == (
            [rollouts, new, demos] if align_on == "all" else [rollouts, new]), align_on


def test_bad_recipe_is_refused_by_each_command_naming_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown recipe field.*reward_on_imagned"):
        load_recipe("lift", _recipe_file(tmp_path, reward_on_imagned=True))
    with pytest.raises(ValueError, match="calibrate_on"):
        load_recipe("lift", _recipe_file(tmp_path, calibrate_on="some"))
    with pytest.raises(ValueError, match=r"recipe calibration_rule: expected one of \('f1', 'balanced'\)"):
        load_recipe("lift", _recipe_file(tmp_path, calibration_rule="accuracy"))
    with pytest.raises(ValueError, match="cameras.*lack the recipe's camera 'workspace'"):
        load_recipe("lift", _recipe_file(tmp_path, camera="workspace", cameras=["agentview"]))
    for cameras in ("workspace", [], [""], [3]):
        with pytest.raises(ValueError, match="recipe cameras: expected a non-empty list"):
            load_recipe("lift", _recipe_file(tmp_path, cameras=cameras))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"reward_config": "missing_reward.json"}))
    with pytest.raises(ValueError, match="missing_reward.json: no such file"):
        load_recipe("lift", bad)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--recipe", str(bad)]) == 2
    assert "missing_reward.json" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    assert main(["loop", "--iterations", "1", "--out", str(tmp_path / "run"), "--policy", str(tmp_path),
                 "--recipe", str(bad)]) == 1
    assert "missing_reward.json" in capsys.readouterr().err and not (tmp_path / "run" / "loop.json").exists()
    assert main(["compare", "--task", "lift", "--budget", "8", "--base", str(tmp_path), "--recipe", str(bad),
                 "--work", str(tmp_path / "cmp")]) == 2
    assert "missing_reward.json" in capsys.readouterr().err and not (tmp_path / "cmp").exists()


def test_loop_defaults_are_the_config_defaults(tmp_path: Path) -> None:
    from dataclasses import MISSING, fields

    from wmpo_core.loop import LoopConfig, config_from_args

    cfg = config_from_args(_args("loop", "--iterations", "1", "--out", str(tmp_path), "--policy", str(tmp_path)))
    for f in fields(LoopConfig):
        if f.default is not MISSING and f.name != "RESUMABLE":
            assert getattr(cfg, f.name) == f.default, f.name


def test_grpo_in_rounds_is_a_recipe_setting_the_demo_runs(tmp_path: Path, capsys) -> None:
    from wmpo_core import demo
    from wmpo_core.pipeline.steps import Collection, refresh_steps, split_iterations

    for name in ("grpo_rounds", "refresh_rollouts", "refresh_align_steps"):
        for bad in (0, -2, True, 1.5, "2", None):
            with pytest.raises(ValueError, match=f"recipe {name}: expected a positive integer"):
                load_recipe("lift", _recipe_file(tmp_path, **{name: bad}))
    assert load_recipe("lift").grpo_rounds == 1  # the paper: one alignment, one GRPO run
    # the shipped two-round recipe is the demo's recipe with rounds, nothing else changed
    from wmpo_core.pipeline.recipe import RECIPE_DIR

    shipped = load_recipe("lift", RECIPE_DIR / "lift_workspace_rounds.json").to_dict()
    single = load_recipe("lift", RECIPE_DIR / "lift_workspace.json").to_dict()
    assert {k: v for k, v in shipped.items() if single[k] != v} == {"grpo_rounds": 2, "source": shipped["source"]}
    assert (shipped["refresh_rollouts"], shipped["refresh_align_steps"]) == (48, 800)
    assert split_iterations(6, 2) == [3, 3] and split_iterations(7, 3) == [3, 2, 2] and split_iterations(4, 1) == [4]
    with pytest.raises(ValueError, match="1 GRPO iteration.*2 round"):
        split_iterations(1, 2)

    # The demo's first round gets its share of the iterations; the estimate adds each refresh.
    rounds = _recipe_file(tmp_path, grpo_rounds=2, refresh_rollouts=8, refresh_align_steps=50)
    (tmp_path / "one").mkdir()
    one = _recipe_file(tmp_path / "one", grpo_rounds=1)
    estimates = {}
    for label, path in (("rounds", rounds), ("one", one)):
        args = _args("demo", "--out", str(tmp_path / label), "--recipe", str(path), "--grpo-iterations", "6")
        grpo = {s.name: s for s in demo.plan(args, tmp_path / label)}["grpo"]
        assert grpo.inputs["iterations"] == (3 if label == "rounds" else 6), label
        assert grpo.inputs["rounds"] == (2 if label == "rounds" else 1)
        estimates[label] = {s.name: s.estimate(args) for s in demo.STAGES}["grpo"]
    assert estimates["rounds"] > estimates["one"]
    assert main(["demo", "--out", str(tmp_path / "few"), "--recipe", str(rounds), "--grpo-iterations", "1"]) == 2
    assert "cannot be split over 2 round" in capsys.readouterr().err and not (tmp_path / "few").exists()
    # the base's rollouts fit the policy-rollout seeds, the second round's would not: refused before anything runs
    (tmp_path / "far_recipe").mkdir()
    far = _recipe_file(tmp_path / "far_recipe", grpo_rounds=2, refresh_rollouts=99_990)
    assert main(["demo", "--out", str(tmp_path / "far"), "--recipe", str(far)]) == 2
    assert "'policy rollouts' [100000, 200000) cannot give 99990 seeds from offset 16" in capsys.readouterr().err
    assert not (tmp_path / "far").exists()

    # A round after the first: rollouts of the previous candidate, the world model aligned on every policy
    # rollout so far from the previous one, all episodes linked, the reward retrained on them and calibrated
    # on the policy rollouts, GRPO from the previous candidate with its own sampling seed.
    recipe = load_recipe("lift", rounds)
    base_rollouts, demos, wm = tmp_path / "rollouts", tmp_path / "demos", tmp_path / "wm"
    c = Collection(str(tmp_path / "cand"), "lift", 8, 100_016, direct=True, temperature=1.0, jobs=2)
    steps = {s.name: s for s in refresh_steps(tmp_path / "r2", str(tmp_path / "cand"), wm, [demos, base_rollouts],
                                              [base_rollouts], recipe, c, budget=56, iterations=3, round_index=1)}
    new = tmp_path / "r2" / "collect" / "episodes"
    assert list(steps) == ["collect", "world_model", "data", "reward", "grpo"]
    assert steps["collect"].inputs["collection"] == c
    assert steps["world_model"].inputs["init"] == wm and steps["world_model"].inputs["episodes"] == [base_rollouts, new]
    assert steps["world_model"].inputs["steps"] == 50
    assert steps["data"].inputs["sources"] == [demos, base_rollouts, new]
    assert steps["reward"].inputs["calibrate_on"] == [base_rollouts, new]
    assert steps["reward"].inputs["world_model"] == tmp_path / "r2" / "world_model" / "run"
    g = steps["grpo"].inputs
    assert (g["policy"], g["iterations"], g["seed_offset"], g["budget"]) == (str(tmp_path / "cand"), 3, 1, 64)
    assert g["world_model"] == tmp_path / "r2" / "world_model" / "run" and g["reward"] == tmp_path / "r2" / "reward"

    # `wmpo loop` and `wmpo compare` run one round and refuse a recipe that asks for more, naming the field.
    assert main(["loop", "--iterations", "1", "--out", str(tmp_path / "run"), "--policy", str(tmp_path),
                 "--recipe", str(rounds)]) == 1
    assert "grpo_rounds 2" in capsys.readouterr().err and not (tmp_path / "run" / "loop.json").exists()
    assert main(["compare", "--task", "lift", "--budget", "8", "--base", str(tmp_path), "--recipe", str(rounds),
                 "--work", str(tmp_path / "cmp")]) == 2
    assert "grpo_rounds 2" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
