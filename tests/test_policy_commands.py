"""`wmpo predict` and `wmpo eval` end to end: real package, real PNG, real MuJoCo scene."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.cli import main as wmpo
from wmpo_core.policy.commands.eval import wilson_interval
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.registry.package import save_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("pkg") / "policy"
    save_package(VLAPolicy(VLAConfig(num_layers=1)), root, data=["ep"])
    return root


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_predict_json_matches_the_policy(package, tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "frame.png")
    rc = wmpo(["predict", "--policy", str(package), "--image", str(tmp_path / "frame.png"),
               "--instruction", "lift the cube", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and np.asarray(out["chunk"]).shape == (8, 7)
    from wmpo_core.policy.loading import load_package

    expected = load_package(package).predict_chunk({"agentview": image}, "lift the cube")
    np.testing.assert_allclose(out["chunk"], expected, atol=1e-6)
    rc = wmpo(["predict", "--policy", str(package), "--image", str(tmp_path / "missing.png"), "--instruction", "x"])
    assert rc == 2 and "missing.png" in capsys.readouterr().err


@pytest.mark.sim
def test_eval_scripted_and_package_with_video(package, tmp_path, capsys):
    rc = wmpo(["eval", "--policy", "scripted", "--task", "lift", "--episodes", "1", "--seed", "3", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert rc == 0 and report["episodes"] == 1 and report["success_rate"] == 1.0  # the demonstrator lifts
    assert "episode 1/1 seed 3: success" in captured.err  # progress on stderr, JSON alone on stdout
    assert report["ci95"][0] < 1.0 == report["ci95"][1]
    rc = wmpo(["eval", "--policy", str(package), "--task", "lift", "--episodes", "1", "--max-steps", "8",
               "--video", str(tmp_path / "videos"), "--json", "--quiet"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "episode" not in captured.err
    assert rc == 0 and report["mean_length"] == 8 and report["success_rate"] == 0.0  # untrained
    video = tmp_path / "videos" / "lift_seed0_fail.mp4"
    assert video.stat().st_size > 1000
    import imageio.v2 as imageio

    assert len(imageio.mimread(video)) == 9  # start frame + 8 steps


@pytest.mark.sim
def test_eval_jobs_split_seeds_and_give_the_same_report(tmp_path, capsys):
    argv = ["eval", "--policy", "scripted", "--task", "lift", "--episodes", "3", "--seed", "11", "--json"]
    assert wmpo(argv) == 0
    one = json.loads(capsys.readouterr().out)
    assert wmpo(argv + ["--jobs", "2"]) == 0
    captured = capsys.readouterr()
    two = json.loads(captured.out)
    assert two["seeds"] == [11, 12, 13] and [r["seed"] for r in two["per_episode"]] == [11, 12, 13]
    assert two["per_episode"] == one["per_episode"] and two["successes"] == one["successes"] == 3
    assert len({r["length"] for r in one["per_episode"]}) > 1  # lengths differ by start state: the order is checked
    assert wmpo(argv + ["--jobs", "0"]) == 2 and "--jobs" in capsys.readouterr().err
    missing = tmp_path / "no_such_policy"
    assert wmpo(["eval", "--policy", str(missing), "--task", "lift", "--episodes", "2", "--jobs", "2"]) == 2
    assert "no_such_policy" in capsys.readouterr().err  # a worker's error reaches the user
