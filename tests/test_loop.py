"""`wmpo loop`: resume after a kill, the gate, the version chain (real commands, real simulator, tiny sizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmpo_core.loop import (
    MARKER,
    Loop,
    LoopConfig,
    VersionChain,
    gate_decision,
    record_in_sim,
    sign_test_p_value,
)
from wmpo_core.stats import paired_outcomes, paired_verdict

pytestmark = pytest.mark.sim
WMPO = [sys.executable, "-m", "wmpo_core.cli"]

WM_CONFIG = {
    "steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "num_inference_steps": 2,
    "vae_steps": 2, "vae_batch_size": 4, "tiny_vae": {"block_out_channels": [8, 8, 16]},
    "transformer": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                    "context_frames": 2, "chunk_size": 8},
}
REWARD_CONFIG = {"steps": 2, "batch_size": 4, "lr": 1e-3, "val_fraction": 0.5, "score_stride": 4,
                 "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 64}}
GRPO_CONFIG = {"iterations": 1, "groups_per_batch": 1, "starts_per_round": 2, "max_sampling_rounds": 1,
               "horizon": 8, "checkpoint_every": 1, "grpo": {"group_size": 2, "minibatch_size": 4}}


def tiny_package(path: Path, seed: int = 0) -> Path:
    """A real (untrained) tiny VLA policy package: safetensors weights + manifest."""
    import torch

    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.registry.package import save_package

    torch.manual_seed(seed)
    cfg = VLAConfig(patch_size=16, vision_hidden_size=32, vision_layers=1, vision_heads=2, vision_intermediate_size=64,
                    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_text_tokens=24)
    save_package(VLAPolicy(cfg), path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Two scripted lift demonstrations (successes), an untrained policy package and tiny configs."""
    root = tmp_path_factory.mktemp("loop")
    rows = record_in_sim("scripted", "lift", 2, 7, root / "demos")
    assert all(r["success"] for r in rows), rows
    tiny_package(root / "base")
    for name, cfg in (("wm", WM_CONFIG), ("reward", REWARD_CONFIG), ("grpo", GRPO_CONFIG)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    return root


def test_gate_rule_paired_sign_test() -> None:
    seeds = list(range(10))
    current = [{"seed": s, "success": s < 6} for s in seeds]
    worse = [{"seed": s, "success": s < 3} for s in seeds]
    d = gate_decision(current, worse, alpha=0.05)
    assert not d.accept and d.candidate_only == 0 and d.current_only == 3 and "not better" in d.reason
    better = [{"seed": s, "success": True} for s in seeds]  # wins 4 discordant states, loses none
    d = gate_decision(current, better, alpha=0.1)
    assert d.accept and d.p_value == pytest.approx(1 / 16)
    assert not gate_decision(current, better, alpha=0.05).accept  # 1/16 > 0.05: not significant
    assert sign_test_p_value(0, 0) == 1.0 and sign_test_p_value(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p_value(3, 1) == pytest.approx(5 / 16)
    with pytest.raises(RuntimeError, match="same start states"):
        gate_decision(current, better[:5], alpha=0.5)
    # The same counts from the one paired helper the gate, compare and the demo's report share.
    base = {s: s < 6 for s in seeds}
    mixed = {s: s < 3 or s >= 7 for s in seeds}  # loses states 3-5, wins 7-9
    assert paired_outcomes(base, mixed) == {"pairs": 10, "wins": 3, "losses": 3, "p_one_sided": pytest.approx(21 / 32),
                                            "p_worse": pytest.approx(21 / 32)}
    assert paired_outcomes(base, {s: True for s in seeds})["p_one_sided"] == pytest.approx(1 / 16)
    # The verdict a report prints: better, worse, or neither, each one-sided at 5%.
    wins_19_losses_36 = {"p_one_sided": sign_test_p_value(19, 36), "p_worse": sign_test_p_value(36, 19)}
    assert paired_verdict(wins_19_losses_36).startswith("worse (one-sided p = 0.015")
    assert paired_verdict({"p_one_sided": sign_test_p_value(68, 41), "p_worse": 0.99}).startswith("better (")
    assert paired_verdict(paired_outcomes(base, mixed)).startswith("no difference shown")
    with pytest.raises(ValueError, match="same start states"):
        paired_outcomes(base, {s: True for s in range(1, 11)})
    with pytest.raises(ValueError, match="same start states"):
        paired_outcomes({}, {})


@pytest.mark.timeout(1800)  # about a minute on an idle 2-core machine; generous for a loaded one
def test_gate_refuses_worse_candidate_and_publish_extends_chain(workspace: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    loop = Loop(LoopConfig(out=str(run), policy=str(workspace / "base"), task="lift", max_steps=60,
                           gate_episodes=2, gate_alpha=1.0, collect_direct=True))
    loop.prepare()
    chain_before = (run / "versions.json").read_text()
    base = loop.versions.current
    # The scripted demonstrator as the policy in service: an untrained candidate solves nothing it does not.
    serving = {"version": "scripted", "package": "scripted"}
    gate = loop.stage_gate(0, serving, str(workspace / "base"), tmp_path / "gate")
    assert gate["current"]["successes"] == 2 and gate["candidate"]["successes"] == 0, gate
    assert gate["current"]["seeds"] == gate["candidate"]["seeds"]  # same held-out start states
    from wmpo_core.rl.config import EVALUATION_SEEDS, POLICY_ROLLOUT_SEEDS

    assert all(s in EVALUATION_SEEDS and s not in POLICY_ROLLOUT_SEEDS for s in gate["current"]["seeds"])
    assert not gate["decision"]["accept"]
    published = loop.stage_publish(0, base, str(workspace / "base"), gate, tmp_path / "publish")
    assert not published["pushed"]
    assert (run / "versions.json").read_text() == chain_before
    assert not (tmp_path / "publish" / "package").exists()
    assert sorted(p.name for p in (run / "robot" / "policies").iterdir()) == [base["version"]]  # the signed first one

    # An accepted candidate is signed with the current version as parent, pushed and becomes current.
    candidate = tiny_package(tmp_path / "candidate", seed=1)
    accepted = {"decision": {"accept": True, "reason": "accepted for the test"}}
    published = loop.stage_publish(0, base, str(candidate), accepted, tmp_path / "publish")
    assert published["pushed"] and published["parent"] == base["version"]
    chain = VersionChain(run / "versions.json")
    assert [e["version"] for e in chain.entries] == [base["version"], published["version"]]
    assert chain.current["parent"] == base["version"]
    installed = Path(chain.current["installed"])
    assert installed.parent == run / "robot" / "policies" and (installed / "signature.json").is_file()
    from wmpo_core.registry.signing import verify_package

    report = verify_package(installed, [loop.public_key])
    assert report.ok, str(report)


def _loop_cmd(ws: Path, run: Path) -> list[str]:
    return WMPO + ["loop", "--iterations", "1", "--out", str(run), "--policy", str(ws / "base"),
                   "--collect-direct", "--episodes-per-iter", "2", "--max-steps", "8", "--demos", str(ws / "demos"),
                   "--wm-config", str(ws / "wm.json"), "--reward-config", str(ws / "reward.json"),
                   "--grpo-config", str(ws / "grpo.json"), "--gate-episodes", "1"]


@pytest.mark.timeout(1800)  # about 2 min on an idle 2-core machine; generous for a loaded one
def test_loop_resumes_after_kill_without_redoing_stages(workspace: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    it = run / "iter_000"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log1 = tmp_path / "first.log"
    with open(log1, "w") as sink:
        proc = subprocess.Popen(_loop_cmd(workspace, run), stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Kill the whole process group as soon as the reward stage is under way.
        while not (it / "reward" / "commands.log").is_file():
            assert proc.poll() is None, log1.read_text()[-3000:]
            assert time.monotonic() < deadline, "the loop did not reach the reward stage"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (it / "collect" / MARKER).is_file() and (it / "world_model" / MARKER).is_file()
    assert not (it / "reward" / MARKER).exists() and not (it / "grpo").exists()
    before = {s: (it / s / MARKER).stat().st_mtime_ns for s in ("collect", "world_model")}
    episodes = sorted(p.name for p in (it / "collect" / "episodes").iterdir())
    wm_files = {p: p.stat().st_mtime_ns for p in (it / "world_model" / "run").rglob("*") if p.is_file()}

    second = subprocess.run(_loop_cmd(workspace, run), capture_output=True, text=True, env=env, timeout=600)
    out = second.stdout
    assert second.returncode == 0, out[-3000:] + second.stderr[-3000:]
    assert "collect: done before" in out and "world model: done before" in out
    assert "train-world-model" not in out and "collecting" not in out  # nothing of them ran again
    assert "train-reward" in out and "$ wmpo grpo" in out and "$ wmpo eval" in out
    assert {s: (it / s / MARKER).stat().st_mtime_ns for s in before} == before
    assert sorted(p.name for p in (it / "collect" / "episodes").iterdir()) == episodes
    assert {p: p.stat().st_mtime_ns for p in wm_files} == wm_files
    for stage in ("reward", "grpo", "gate", "publish"):
        assert (it / stage / MARKER).is_file(), stage
    metrics = json.loads((it / "metrics.json").read_text())
    assert metrics["collect"]["mode"].startswith("simulator, direct")
    assert metrics["collect"]["episodes"] == 2 and metrics["world_model"]["episodes"] == 4  # 2 demos + 2 collected
    # 2 scripted successes + 2 failures (8 steps): the reward threshold is calibrated on their imagined
    # replays in this iteration's world model, and GRPO scores with that calibrated copy.
    reward = metrics["reward"]
    assert reward["run"] == str(it / "reward" / "calibrated") and reward["calibration_episodes"] == 4, reward
    calibration = json.loads((it / "reward" / "calibrated" / "calibration.json").read_text())
    assert calibration["tau"] == reward["tau"] and len(calibration["scores"]) == 4
    assert f"--reward {it / 'reward' / 'calibrated'}" in out
    # The loop's own 2 episodes all failed, so it calibrated on every training episode and said so.
    assert "calibrating on all training episodes" in out and reward["calibrated_on"] == [str(it / "data" / "episodes")]
    # The episodes so far are linked once per iteration; the world model, reward and GRPO all read that folder.
    assert metrics["data"]["episodes"] == 4 and sorted(p.name for p in it.iterdir() if (p / "data").exists()) == []
    assert f"--episodes {it / 'data' / 'episodes'} " in out and "$ wmpo grpo" in out
    chain = json.loads((run / "versions.json").read_text())["versions"]
    assert len(chain) == 1 + int(metrics["publish"]["pushed"])

    # A third run finds everything done and changes nothing.
    third = subprocess.run(_loop_cmd(workspace, run), capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and "$ wmpo" not in third.stdout, third.stdout[-2000:]
    # Other settings on the same run directory are refused, naming the field.
    changed = _loop_cmd(workspace, run)
    changed[changed.index("--episodes-per-iter") + 1] = "3"
    fourth = subprocess.run(changed, capture_output=True, text=True, env=env, timeout=120)
    assert fourth.returncode == 1 and "episodes_per_iter" in fourth.stderr

    # The run's report: initial version, the iteration's candidate and the robot's version after the gate,
    # all on the same held-out start states; a second report reuses the evaluations.
    report = subprocess.run(WMPO + ["loop-report", "--out", str(run), "--episodes", "2", "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]
    assert [(r["iteration"], r["role"]) for r in rows] == [(None, "initial"), (0, "candidate"), (0, "robot after")]
    assert rows[0]["version"] == chain[0]["version"] and rows[2]["version"] == chain[-1]["version"]
    assert rows[1]["pushed"] == metrics["publish"]["pushed"]
    assert all(r["episodes"] == 2 and len(r["per_episode_success"]) == 2 and r["seeds"] == rows[0]["seeds"]
               for r in rows)
    evals = (run / "report" / "commands.log").read_text().count("$ wmpo eval")
    assert evals == len({r["version"] for r in rows})  # each package once
    again = subprocess.run(WMPO + ["loop-report", "--out", str(run), "--episodes", "2"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert again.returncode == 0 and "initial" in again.stdout and "robot after" in again.stdout
    assert (run / "report" / "commands.log").read_text().count("$ wmpo eval") == evals
    missing = subprocess.run(WMPO + ["loop-report", "--out", str(tmp_path / "nothing")], capture_output=True,
                             text=True, env=env, timeout=60)
    assert missing.returncode == 1 and "loop-report" in missing.stderr
