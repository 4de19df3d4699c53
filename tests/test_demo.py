"""`wmpo demo` and its report: report.json fields, a self-contained report.html, the stage plan, end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wmpo_core.report import (
    read_jsonl_series,
    read_tensorboard_scalars,
    svg_line_chart,
    version_row,
    write_report,
)

WMPO = [sys.executable, "-m", "wmpo_core.cli"]


def test_report_json_fields_and_self_contained_html(tmp_path: Path) -> None:
    import imageio.v2 as imageio
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(5):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("train/lr", 0.1, step)
    writer.close()
    scalars = read_tensorboard_scalars(tmp_path / "tb")
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([1, 0.5, 1 / 3, 0.25, 0.2])
    (tmp_path / "log.jsonl").write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "loss": 0.25}\n{"iter')
    grpo = read_jsonl_series(tmp_path / "log.jsonl", "iteration", ("loss", "absent"))
    assert grpo == {"loss": [[1.0, 0.5], [2.0, 0.25]]}  # the line cut by an interruption is skipped
    frames = np.zeros((3, 8, 16, 3), np.uint8)
    frames[:, :, 8:] = 255
    imageio.mimwrite(tmp_path / "media.gif", list(frames), duration=100, loop=0)

    rows = [version_row("before", "v1", 3, 10, seeds=range(10), evaluated_via="ROS 2 graph"),
            version_row("after", "v2", 7, 10, parent="v1", seeds=range(10), evaluated_via="ROS 2 graph")]
    html_path, json_path = write_report(
        tmp_path, title="t", task="lift", versions=rows,
        stages=[{"name": "a", "title": "A", "estimate_s": 10, "seconds": 12.5}, {"name": "b", "estimate_s": 5}],
        curves={"bc": {"loss": scalars["train/loss"]}, "grpo": grpo},
        videos=[{"title": "real vs imagined", "path": "media.gif"}])
    data = json.loads(json_path.read_text())
    assert [r["label"] for r in data["versions"]] == ["before", "after"]
    for r in data["versions"]:
        for key in ("version", "success_rate", "ci95", "episodes", "successes", "evaluated_via"):
            assert key in r, key
        lo, hi = r["ci95"]
        assert 0 <= lo < r["success_rate"] < hi <= 1
    assert data["versions"][0]["success_rate"] == 0.3 and data["versions"][1]["parent"] == "v1"
    assert data["versions"][0]["ci95"] == pytest.approx([0.1078, 0.6032], abs=1e-3)  # Wilson, 3/10
    assert data["stages"][0]["seconds"] == 12.5 and data["videos"][0]["path"] == "media.gif"
    page = html_path.read_text()
    assert page.count("<svg") == 2 and "polyline" in page
    assert "data:image/gif;base64," in page  # the video is inside the page
    assert "src=\"http" not in page and "href=\"http" not in page and "<script" not in page
    assert "30.0% (3/10)" in page and "70.0% (7/10)" in page
    assert data["paired"] is None and "paired on" not in page
    write_report(tmp_path / "paired", title="t", task="lift", versions=rows,
                 paired={"pairs": 10, "wins": 4, "losses": 0, "p_one_sided": 0.0625})
    assert json.loads((tmp_path / "paired" / "report.json").read_text())["paired"]["wins"] == 4
    assert "paired on 10 start states" in (tmp_path / "paired" / "report.html").read_text()
    assert "no difference shown (one-sided p = 0.0625" in (tmp_path / "paired" / "report.html").read_text()
    write_report(tmp_path / "worse", title="t", task="lift", versions=rows,
                 paired={"pairs": 250, "wins": 19, "losses": 36, "p_one_sided": 0.993, "p_worse": 0.015})
    assert "the newer version is worse (one-sided p = 0.015" in (tmp_path / "worse" / "report.html").read_text()
    with pytest.raises(ValueError, match=r"versions\[0\].*ci95"):
        write_report(tmp_path / "bad", title="t", task="lift", versions=[{"success_rate": 0.5, "episodes": 2}])


def test_svg_chart_scales_points_into_the_plot() -> None:
    svg = svg_line_chart({"loss": [[0, 10.0], [10, 0.0]], "nan": [[0, float("nan")]]}, "c", width=200, height=100)
    points = svg.split('points="')[1].split('"')[0].split()
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in points)
    assert x0 < x1 and y0 < y1  # first point top left (high loss), last bottom right
    assert "no data" in svg_line_chart({}, "empty")


def test_demo_plan_prints_estimates_and_reuses_finished_stages(tmp_path: Path) -> None:
    from wmpo_core import demo
    from wmpo_core.commands import demo as demo_command
    from wmpo_core.loop import write_json_atomic

    out = tmp_path / "demo"
    write_json_atomic(out / "keys" / "stage.json", {"seconds": 1.5})
    # Defaults must fit the 45-minute budget by the module's own estimates.
    args = __import__("argparse").ArgumentParser()
    demo_command.configure(args)
    defaults = args.parse_args([])
    assert sum(s.estimate(defaults) for s in demo.STAGES) <= 45 * 60
    proc = subprocess.run(WMPO + ["demo", "--out", str(out), "--demos", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--demos must be >= 1" in proc.stderr
    assert demo.stage_results(out) == {"keys": {"seconds": 1.5}}


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.timeout(5400)
def test_demo_end_to_end_tiny(tmp_path: Path) -> None:
    """The whole demo at tiny sizes through the ROS graph, then a re-run that reuses every stage."""
    from test_loop import GRPO_CONFIG, REWARD_CONFIG, WM_CONFIG

    for name, cfg in (("wm", WM_CONFIG), ("reward", REWARD_CONFIG), ("grpo", GRPO_CONFIG)):
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    env = dict(os.environ, ROS_DOMAIN_ID="116", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = tmp_path / "demo"
    cmd = WMPO + ["demo", "--out", str(out), "--demos", "2", "--rollouts", "2", "--eval-episodes", "2",
                  "--max-steps", "60", "--bc-steps", "4", "--wm-steps", "2", "--align-steps", "2", "--reward-steps", "2",
                  "--grpo-iterations", "1", "--held-out", "3", "--wm-config", str(tmp_path / "wm.json"),
                  "--reward-config", str(tmp_path / "reward.json"), "--grpo-config", str(tmp_path / "grpo.json")]
    if os.environ.get("WMPO_DEMO_TEST_DIRECT"):
        cmd.append("--direct")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((out / "report.json").read_text())
    labels = [r["label"] for r in data["versions"]]
    assert labels == ["scripted demonstrator"] + ["before (BC base)", "after (WMPO)"] * 2
    before, after, held_before, held_after = data["versions"][1:]
    assert after["parent"] == before["version"] and before["seeds"] == after["seeds"]
    via = "simulator" if os.environ.get("WMPO_DEMO_TEST_DIRECT") else "ROS 2 graph"
    assert all(r["episodes"] == 2 and via in r["evaluated_via"] for r in (before, after))
    # The held-out rows: the same two versions straight in the simulator on 3 start states, the graph's 2 first.
    assert (held_before["version"], held_after["version"]) == (before["version"], after["version"])
    assert held_before["seeds"] == held_after["seeds"] and held_before["seeds"][:2] == before["seeds"]
    assert all(r["episodes"] == 3 and "simulator" in r["evaluated_via"] for r in (held_before, held_after))
    paired = data["paired"]  # the held-out evaluation decides: base and pushed policy on the same start states
    assert paired["pairs"] == 3 and "simulator" in paired["evaluated_via"]
    assert paired["wins"] - paired["losses"] == held_after["successes"] - held_before["successes"]
    assert all(s["seconds"] is not None for s in data["stages"] if s["name"] != "report")  # measured times
    assert (out / "report.html").is_file() and "<svg" in (out / "report.html").read_text()
    assert (out / "robot" / "policies" / after["version"] / "signature.json").is_file()
    # 2 scripted successes and 2 failing rollouts: GRPO used the reward calibrated on their imagined replays.
    reward = json.loads((out / "reward" / "stage.json").read_text())
    assert reward["run"] == str(out / "reward" / "calibrated") and reward["calibration_episodes"] == 4, reward
    assert f"--reward {reward['run']} " in (out / "grpo" / "commands.log").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "$ wmpo" not in again.stdout and "reused" in again.stdout
