"""GRPO in rounds (recipe ``grpo_rounds``): one refresh round for real at tiny sizes: rollouts of the previous
candidate in the simulator, the world model aligned further, the reward retrained and calibrated, GRPO again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loop import GRPO_CONFIG, REWARD_CONFIG, WM_CONFIG, tiny_package

from wmpo_core.pipeline.recipe import load_recipe
from wmpo_core.pipeline.runner import run_step
from wmpo_core.pipeline.steps import Collection, record_in_sim, refresh_steps, train_world_model
from wmpo_core.registry.package import read_package_manifest

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_refresh_round_runs_for_real_and_resumes(tmp_path: Path, capsys) -> None:
    for name, cfg in (("wm", WM_CONFIG), ("reward", REWARD_CONFIG), ("grpo", GRPO_CONFIG)):
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    (tmp_path / "recipe.json").write_text(json.dumps({
        "world_model_config": "wm.json", "reward_config": "reward.json", "grpo_config": "grpo.json",
        "grpo_rounds": 2, "refresh_rollouts": 2, "refresh_align_steps": 2}))
    recipe = load_recipe("lift", tmp_path / "recipe.json")
    demos, first = tmp_path / "demos", tmp_path / "rollouts"
    assert all(r["success"] for r in record_in_sim("scripted", "lift", 2, 7, demos))
    base = tiny_package(tmp_path / "base")
    record_in_sim(str(base), "lift", 2, 100_000, first, max_steps=30, temperature=1.0)
    wm = Path(train_world_model([demos], tmp_path / "wm", recipe)["run"])

    c = Collection(str(base), "lift", 2, 100_002, direct=True, max_steps=30, temperature=1.0, jobs=2)
    steps = refresh_steps(tmp_path / "r2", str(base), wm, [demos, first], [first], recipe, c, budget=4,
                          iterations=1, round_index=1, reward_steps=2)
    done = {s.name: run_step(s) for s in steps}
    new = tmp_path / "r2" / "collect" / "episodes"
    assert done["collect"]["episodes"] == 2 and done["collect"]["seeds"] == [100_002, 100_003]
    assert sorted(p.name for p in new.iterdir()) and done["data"]["episodes"] == 6  # 2 demos + 2 + 2 rollouts
    wm2 = tmp_path / "r2" / "world_model" / "run"
    assert done["world_model"]["init"] == str(wm) and done["world_model"]["episodes"] == 4
    # the untrained policy failed every rollout: calibrated on all 6 training episodes instead, and said so
    assert "calibrating on all training episodes" in capsys.readouterr().out
    assert done["reward"]["calibration_episodes"] == 6 and done["reward"]["run"].startswith(str(tmp_path / "r2"))
    log = (tmp_path / "r2" / "grpo" / "commands.log").read_text()
    assert f"--world-model {wm2} --reward {done['reward']['run']} " in log and f"--policy {base} " in log
    config = json.loads((tmp_path / "r2" / "grpo" / "grpo_config.json").read_text())
    assert config == {**GRPO_CONFIG, "seed": 1}  # the round's own sampling seed, the rest as the recipe's
    manifest = read_package_manifest(Path(done["grpo"]["candidate"]))
    assert manifest["training_data"]["budget"] == 6
    # a re-run finds every step done
    again = {s.name: run_step(s) for s in refresh_steps(tmp_path / "r2", str(base), wm, [demos, first], [first],
                                                         recipe, c, budget=4, iterations=1, round_index=1,
                                                         reward_steps=2)}
    assert again == done and capsys.readouterr().out.count("done before") == 5
