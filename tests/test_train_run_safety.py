"""Training never destroys an earlier run by default: real tiny BC runs on real bags, real files.

- `wmpo train-policy --out EXISTING_RUN` without --resume or --overwrite refuses (exit 2) and
  leaves the earlier run's package and checkpoints as they were;
- --overwrite replaces only the earlier run's checkpoints and packages;
- checkpoint pruning removes only the run's own checkpoints.
"""

import json
import shutil

import numpy as np
import pytest
from test_dataset_episodes import write_episode_bag
from test_policy_train import TINY
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.cli import main as wmpo
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.train import TrainConfig, latest_checkpoint, train_policy
from wmpo_core.registry.verify import sha256_file


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    rng = np.random.default_rng(1)
    for i in range(3):
        n = 10
        actions = rng.normal(0, 0.02, (n, 7))
        write_episode_bag(root, f"ep_{i}", {"agentview": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)},
                          actions, rng.normal(size=(n, 9)), success=True)
    return root


def _tc(**kw):
    return TrainConfig(**{"steps": 2, "batch_size": 2, "save_every": 1, "warmup_steps": 1, "val_fraction": 0.0,
                          "keep_checkpoints": 1, **kw})


def test_existing_run_is_refused_without_resume_or_overwrite(bags, tmp_path, capsys):
    run = tmp_path / "run"
    package = train_policy(bags, run, VLAConfig(**TINY), _tc(), progress=False)
    (run / "my_notes.txt").write_text("mine")
    before = {p.relative_to(run): sha256_file(p) for p in run.rglob("*") if p.is_file()}
    config = tmp_path / "config.json"
    VLAConfig(**{**TINY, "hidden_size": 32}).save(config)  # a different model: replacing would lose the first
    code = wmpo(["train-policy", "--episodes", str(bags), "--out", str(run), "--config", str(config), "--steps", "2",
                 "--batch-size", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "holds an earlier run" in err and "--resume" in err and "--overwrite" in err, err
    after = {p.relative_to(run): sha256_file(p) for p in run.rglob("*") if p.is_file()}
    assert after == before and package.is_dir()

    replaced = train_policy(bags, run, VLAConfig(**{**TINY, "hidden_size": 32}), _tc(), progress=False,
                            overwrite=True)
    assert json.loads((replaced / "config.json").read_text())["hidden_size"] == 32
    assert (run / "my_notes.txt").read_text() == "mine"  # --overwrite removes the earlier run's outputs only


def test_pruning_leaves_other_runs_checkpoints(bags, tmp_path):
    run = tmp_path / "run"
    train_policy(bags, run, VLAConfig(**TINY), _tc(), progress=False)
    ours = latest_checkpoint(run)
    assert ours.name == "step_0000002"
    # another run's checkpoint in the same folder (e.g. a second training started on the same --out)
    other = ours.parent / "step_0000001"
    shutil.copytree(ours, other)
    state = json.loads((other / "trainer_state.json").read_text())
    (other / "trainer_state.json").write_text(json.dumps({**state, "step": 1, "run_id": "someone-elses-run"}))
    train_policy(bags, run, None, _tc(steps=4), resume=True, progress=False)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step_0000001", "step_0000004"], kept  # ours pruned to keep_checkpoints=1, theirs untouched
    assert json.loads((other / "trainer_state.json").read_text())["run_id"] == "someone-elses-run"
