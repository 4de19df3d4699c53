"""`wmpo episodes DIR [--json] [--repair]` through a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter
from wmpo_core.data.episodes import write_synthetic_episode


def wmpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmpo_core.cli", "episodes", *args],
                          capture_output=True, text=True, timeout=120)


def test_episodes_command_lists_repairs_and_signals_problems_by_exit_code(tmp_path):
    write_synthetic_episode(tmp_path, 6, episode_id="a-good")
    write_synthetic_episode(tmp_path, 3, episode_id="b-failed", success=False)
    writer = EpisodeWriter(tmp_path, EpisodeMetadata.new("stack", "stack it", episode_id="c-crashed"),
                           start_ns=0, flush_interval_s=None, chunk_size=16 * 1024)
    for k in range(20):
        img = np.full((32, 32, 3), k, np.uint8)
        writer.write(T.camera_image_topic("agentview"), k * 10**8, T.image_msg(k * 10**8, img))
        writer.write(T.APPLIED_ACTION, k * 10**8 + 1, T.applied_action_msg(k * 10**8 + 1, np.zeros(7)))
    writer.abort()  # leaves the bag as a killed writer would: no metadata.yaml

    res = wmpo(str(tmp_path))
    assert res.returncode == 4, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["episode", "id", "task", "steps", "duration", "s", "success", "policy",
                                "version", "status"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["a-good"][1:3] == ["lift", "6"] and rows["a-good"][4:] == ["yes", "synthetic", "complete"]
    assert rows["b-failed"][4] == "no"
    assert rows["c-crashed"][1] == "stack" and rows["c-crashed"][-1] == "needs-repair"
    assert "--repair" in res.stderr

    res = wmpo(str(tmp_path), "--json")
    assert res.returncode == 4
    listed = {e["episode_id"]: e for e in json.loads(res.stdout)}
    assert listed["a-good"]["steps"] == 6 and listed["a-good"]["duration_s"] > 0.25
    assert listed["c-crashed"]["complete"] is False and listed["c-crashed"]["status"] == "needs-repair"

    res = wmpo(str(tmp_path), "--repair", "--json")
    assert res.returncode == 0, res.stderr
    assert "repaired" in res.stderr and "c-crashed" in res.stderr
    listed = {e["episode_id"]: e for e in json.loads(res.stdout)}
    assert listed["c-crashed"]["status"] == "incomplete" and listed["c-crashed"]["steps"] > 0

    (tmp_path / "d-junk").mkdir()
    (tmp_path / "d-junk" / "d-junk.mcap").write_bytes(b"this is not a bag")
    res = wmpo(str(tmp_path))
    assert res.returncode == 3
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and "d-junk/d-junk.mcap: not an MCAP file" in errors[0]
    assert len(res.stdout.strip().splitlines()) == 4  # header + the three readable episodes
    res = wmpo(str(tmp_path), "--json")
    assert res.returncode == 3
    bad = [e for e in json.loads(res.stdout) if "error" in e]
    assert len(bad) == 1 and bad[0]["path"].endswith("d-junk/d-junk.mcap") and "not an MCAP file" in bad[0]["error"]

    res = wmpo(str(tmp_path / "missing"))
    assert res.returncode == 1
    assert res.stderr.strip() == f"wmpo episodes: {tmp_path / 'missing'}: not a directory" and res.stdout == ""
