"""The base-policy recipe: shipped recipe files parse into valid configs, their data sections collect
real demonstrations; schedule and augmentation behave."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wmpo_core.data.bag import read_metadata
from wmpo_core.data.dataset import list_episode_dirs
from wmpo_core.policy.commands.train_policy import DATA_FIELDS, RECIPES_DIR, load_recipe, recipe_episodes
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.train import TrainConfig, learning_rate, random_shift


def test_every_shipped_recipe_builds_valid_configs():
    recipes = sorted(RECIPES_DIR.glob("*.json"))
    assert recipes, "no recipe shipped"
    for path in recipes:
        recipe = load_recipe(path.stem)
        VLAConfig.from_dict(recipe["policy"], where=str(path))
        TrainConfig.from_dict(recipe["train"], where=str(path))
        if "data" in recipe:
            assert set(recipe["data"]) <= set(DATA_FIELDS), path


def test_recipe_data_is_collected_once_then_reused(tmp_path):
    recipe_file = tmp_path / "r.json"
    recipe_file.write_text(json.dumps({"data": {"task": "lift", "episodes": 1, "seed": 7, "noise": 0.0}, "train": {}}))
    recipe = load_recipe(recipe_file)
    folder = recipe_episodes(recipe, tmp_path / "run", progress=False)
    bags = list_episode_dirs(folder)
    assert len(bags) == 1
    meta = read_metadata(bags[0])
    assert meta.task == "lift" and meta.seed == 7 and meta.success is True  # the clean demonstrator lifts the cube
    stamp = bags[0].stat().st_mtime_ns
    assert recipe_episodes(recipe, tmp_path / "run", progress=False) == folder  # reused, not recollected
    assert list_episode_dirs(folder) == bags and bags[0].stat().st_mtime_ns == stamp
    recipe["data"]["episodes"] = 2
    with pytest.raises(ValueError, match="holds 1 episodes"):
        recipe_episodes(recipe, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="no 'data' section"):
        recipe_episodes({"where": "x.json"}, tmp_path / "other")
    with pytest.raises(ValueError, match="unknown"):
        recipe_episodes({"where": "x.json", "data": {"task": "lift", "episodes": 1, "noize": 0.1}}, tmp_path / "other")


def test_recipe_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no shipped recipe"):
        load_recipe("no_such_recipe")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [1, 2]}))
    with pytest.raises(ValueError, match=r"bad\.json: field 'train'"):
        load_recipe(bad)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"train": {"stepz": 3}}))
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_dict(load_recipe(typo)["train"], where=str(typo))
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    tc = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(tc, 0) == pytest.approx(1e-4)
    assert learning_rate(tc, 9) == pytest.approx(1e-3)
    assert learning_rate(tc, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert learning_rate(tc, 110) == pytest.approx(1e-4)
    lrs = [learning_rate(tc, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    constant = TrainConfig(steps=110, lr=1e-3, warmup_steps=10)
    assert learning_rate(constant, 100) == 1e-3


def test_schedule_steps_stops_early_on_the_longer_schedule():
    long = TrainConfig(steps=210, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    early = TrainConfig(steps=60, lr=1e-3, warmup_steps=10, lr_schedule="cosine", schedule_steps=210)
    assert [learning_rate(early, s) for s in range(60)] == [learning_rate(long, s) for s in range(60)]
    assert learning_rate(early, 59) > 2 * learning_rate(TrainConfig(steps=60, lr=1e-3, warmup_steps=10,
                                                                    lr_schedule="cosine"), 59)
    with pytest.raises(ValueError, match="schedule_steps"):
        TrainConfig(schedule_steps=-1)


def test_random_shift_moves_content_and_keeps_shape():
    pixels = torch.zeros(4, 1, 3, 16, 16)
    pixels[:, :, :, 8, 8] = 1.0  # one bright pixel: its new place reveals the shift
    out = random_shift(pixels, 3, torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape
    places = [tuple(torch.nonzero(o[0, 0]).tolist()[0]) for o in out]
    assert all(abs(r - 8) <= 3 and abs(c - 8) <= 3 for r, c in places)
    assert len(set(places)) > 1  # images of one batch get different shifts
    again = random_shift(pixels, 3, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_shift(pixels, 0, torch.Generator()) is pixels
