"""`wmpo label`: success judged after the fact, stored beside real bags, seen by every reader."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from wmpo_core.data.bag import load_episode, read_metadata
from wmpo_core.data.dataset import EpisodeDataset
from wmpo_core.data.episodes import write_synthetic_episode
from wmpo_core.data.labels import LABEL_FILE


def wmpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmpo_core.cli", *args], capture_output=True, text=True, timeout=120)


def listed(folder) -> dict[str, dict]:
    res = wmpo("episodes", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    return {e["episode_id"]: e for e in json.loads(res.stdout)}


def test_label_changes_what_episodes_and_trainers_see_without_touching_the_bag(tmp_path):
    write_synthetic_episode(tmp_path, 20, episode_id="ep-a", success=None)
    write_synthetic_episode(tmp_path, 20, episode_id="ep-b", success=True)
    bag_bytes = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert listed(tmp_path)["ep-a"]["success"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert EpisodeDataset(tmp_path, only_success=True).episode_ids == ["ep-b"]

    res = wmpo("label", str(tmp_path), "--episode", "ep-a", "--success", "yes", "--at", "0.5")
    assert res.returncode == 0, res.stderr
    assert "ep-a: success yes at 0.5 s" in res.stdout
    res = wmpo("label", str(tmp_path), "--episode", "ep-b", "--success", "no")
    assert res.returncode == 0, res.stderr

    # The bags are byte for byte what the recorder wrote; the label lives beside them.
    assert all(p.read_bytes() == b for p, b in bag_bytes.items())
    assert (tmp_path / "ep-a" / LABEL_FILE).is_file()
    rows = listed(tmp_path)
    assert rows["ep-a"]["success"] is True and rows["ep-b"]["success"] is False
    table = wmpo("episodes", str(tmp_path)).stdout
    assert "yes (label)" in table and "no (label)" in table
    assert read_metadata(tmp_path / "ep-b").extra["recorded_success"] is True

    # Trainers: the BC dataset index and the aligned arrays (world / reward models) see the label.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert EpisodeDataset(tmp_path, only_success=True).episode_ids == ["ep-a"]
    ep = load_episode(tmp_path / "ep-a")
    # Frame t is stamped start + t / 20 Hz; the bag's first message is 1 ns before: 0.5 s -> frame 10.
    assert ep.metadata.success is True and ep.success_step == 10
    assert ep.success_flags is not None and ep.success_flags.tolist() == [t >= 10 for t in range(20)]
    failed = load_episode(tmp_path / "ep-b")
    assert failed.metadata.success is False and failed.success_step is None

    # Same label again: nothing changes; a different one needs --force; --clear restores the recording.
    res = wmpo("label", str(tmp_path), "--episode", "ep-b", "--success", "no")
    assert res.returncode == 0 and "(unchanged)" in res.stdout
    res = wmpo("label", str(tmp_path), "--episode", "ep-b", "--success", "yes")
    assert res.returncode == 2 and "--force" in res.stderr and "ep-b/wmpo_label.json" in res.stderr
    assert wmpo("label", str(tmp_path), "--episode", "ep-b", "--clear").returncode == 0
    assert listed(tmp_path)["ep-b"]["success"] is True


def test_label_csv_batch_checks_every_row_before_writing(tmp_path):
    for k in range(3):
        write_synthetic_episode(tmp_path, 10, episode_id=f"ep-{k}", success=None)
    bad = tmp_path / "bad.csv"
    bad.write_text("episode_id,success,at_s\nep-0,yes,0.2\nep-1,maybe,\n")
    res = wmpo("label", str(tmp_path), "--csv", str(bad))
    assert res.returncode == 2
    assert f"{bad}: line 3: success 'maybe': expected yes or no" in res.stderr
    assert not list(tmp_path.rglob(LABEL_FILE))  # the good first row was not written either

    late = tmp_path / "late.csv"
    late.write_text("episode_id,success,at_s\nep-0,yes,0.2\nep-1,yes,9\n")
    res = wmpo("label", str(tmp_path), "--csv", str(late))
    assert res.returncode == 2 and "line 3: at 9 s is after the end of episode ep-1" in res.stderr
    assert not list(tmp_path.rglob(LABEL_FILE))

    good = tmp_path / "good.csv"
    good.write_text("episode_id,success,at_s\nep-0,yes,0.2\nep-1,no,\nep-2,yes,\n")
    res = wmpo("label", str(tmp_path), "--csv", str(good))
    assert res.returncode == 0, res.stderr
    assert {k: v["success"] for k, v in listed(tmp_path).items()} == {"ep-0": True, "ep-1": False, "ep-2": True}


@pytest.mark.parametrize(("args", "message"), [
    (["--episode", "nope", "--success", "yes"], "no episode 'nope' in"),
    (["--episode", "ep-0", "--success", "maybe"], "--success: success 'maybe': expected yes or no"),
    (["--episode", "ep-0", "--success", "no", "--at", "0.1"], "only goes with success yes"),
    (["--episode", "ep-0", "--success", "yes", "--at", "-1"], "expected seconds >= 0"),
    (["--episode", "ep-0"], "give --episode ID --success yes|no"),
])
def test_label_rejects_a_bad_id_or_value_with_a_clear_error(tmp_path, args, message):
    write_synthetic_episode(tmp_path, 5, episode_id="ep-0", success=None)
    res = wmpo("label", str(tmp_path), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "ep-0" / LABEL_FILE).exists()


def test_a_malformed_label_file_is_reported_by_file_and_field(tmp_path):
    write_synthetic_episode(tmp_path, 5, episode_id="ep-0", success=None)
    (tmp_path / "ep-0" / LABEL_FILE).write_text(json.dumps({"format": "wmpo-label/1", "success": "yes"}))
    res = wmpo("episodes", str(tmp_path))
    assert res.returncode == 3
    assert f"{tmp_path / 'ep-0' / LABEL_FILE}: field 'success' must be true or false" in res.stderr
