"""`wmpo compare`: disjoint seed ranges, and the JSON rows of a real (tiny) comparison in the simulator."""

from __future__ import annotations

import json

import pytest
import torch

from wmpo_core.rl.config import (
    DEMONSTRATION_SEEDS,
    EVALUATION_SEEDS,
    POLICY_ROLLOUT_SEEDS,
    SEED_RANGES,
    SeedRange,
    assert_disjoint,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; the machine's cores are shared with other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_shipped_trainer_config_parses_and_validates():
    """The configs the README's commands pass (`--wmpo-config`, `--dpo-config`, ...) load with their class."""
    from pathlib import Path

    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, WMPOConfig, load_config

    folder = Path(__file__).resolve().parents[1] / "wmpo_core" / "rl" / "configs"
    kinds = {"wmpo": WMPOConfig, "grpo_sim": SimGRPOConfig, "dpo": DPOTrainConfig}
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 4, files
    for path in files:
        kind = next(k for k in sorted(kinds, key=len, reverse=True) if f"_{k}" in path.stem)
        load_config(kinds[kind], path).validate()  # unknown fields and bad values raise, naming the file
    g8 = load_config(WMPOConfig, folder / "lift_wmpo_g8.json")
    assert (g8.groups_per_batch, g8.starts_per_round, g8.iterations) == (8, 8, 8)


def test_seed_ranges_are_disjoint_and_checked():
    assert_disjoint()
    for i, a in enumerate(SEED_RANGES):
        for b in SEED_RANGES[i + 1 :]:
            assert not set(range(a.start, a.stop)) & set(range(b.start, b.stop)), (a, b)
    with pytest.raises(ValueError, match="overlap"):
        assert_disjoint((DEMONSTRATION_SEEDS, SeedRange("clash", 99_999, 100_001)))
    from wmpo_core.rl.compare import evaluation_seeds

    seeds = evaluation_seeds(100)
    assert seeds == list(range(EVALUATION_SEEDS.start, EVALUATION_SEEDS.start + 100))
    assert not any(s in POLICY_ROLLOUT_SEEDS or s in DEMONSTRATION_SEEDS for s in seeds)
    with pytest.raises(ValueError, match="cannot give"):
        evaluation_seeds(len(EVALUATION_SEEDS) + 1)


def test_package_trained_on_evaluation_seeds_is_refused(tmp_path):
    from test_rl_trainers_imagination import tiny_policy

    from wmpo_core.registry.package import save_package, summarize_training_data
    from wmpo_core.rl.compare import check_budget, check_training_seeds, evaluation_seeds

    leaky = save_package(tiny_policy(), tmp_path / "leaky", parent="base-0", data=summarize_training_data(
        [], budget=8, seed_range=["evaluation", EVALUATION_SEEDS.start + 5, EVALUATION_SEEDS.start + 6]))
    with pytest.raises(ValueError, match="meet the evaluation seeds"):
        check_training_seeds(leaky, evaluation_seeds(10))
    check_training_seeds(leaky, evaluation_seeds(5))  # seeds 0..4 of the range stay untouched
    # `wmpo grpo` records the runs of its start states' seeds: any run that meets the evaluation seeds counts.
    start = EVALUATION_SEEDS.start
    runs = save_package(tiny_policy(), tmp_path / "runs", parent="base-0", data=summarize_training_data(
        [], budget=8, seed_ranges=[["start states", 7, 9], ["start states", start + 3, start + 4]]))
    with pytest.raises(ValueError, match=rf"\[{start + 3}, {start + 4}\)"):
        check_training_seeds(runs, evaluation_seeds(4))
    check_training_seeds(runs, evaluation_seeds(3))
    with pytest.raises(ValueError, match="budget of 8"):
        check_budget(leaky, 16)


def test_paired_against_base_hand_computed():
    """Wins, losses and the one-sided sign test on five shared start states; the table shows them."""
    from wmpo_core.rl.compare import MethodResult, format_table, paired_against

    def result(method, outcomes, seeds=(1, 2, 3, 4, 5)):
        k = sum(outcomes)
        return MethodResult(method=method, success_rate=k / max(len(outcomes), 1), ci95=[0.0, 1.0], mean_success_length=None,
                            successes=k, episodes=len(outcomes), package="p", version="v", seeds=list(seeds),
                            outcomes=list(outcomes))

    base = result("base", [True, False, False, True, False])
    other = result("wmpo", [True, True, True, False, False])
    # wins at seeds 2 and 3, a loss at seed 4: P(X >= 2), X ~ Binomial(3, 1/2) = (3 + 1) / 8
    assert paired_against(base, other) == {"wins": 2, "losses": 1, "p_one_sided": 0.5}
    assert paired_against(base, result("wmpo", [True] * 5))["p_one_sided"] == 1 / 8  # 3 wins, no loss
    assert paired_against(base, result("dpo", other.outcomes, seeds=(6, 7, 8, 9, 10))) is None  # other states
    assert paired_against(base, result("dpo", [])) is None  # an evaluation cached without outcomes
    other.paired_vs_base = paired_against(base, other)
    table = format_table("lift", 8, [base, other])
    assert "2/1, p = 0.5" in table.splitlines()[-1] and "p =" not in table.splitlines()[-2]
    assert "outcomes" not in other.row() and other.row()["paired_vs_base"]["wins"] == 2


@pytest.mark.sim
def test_compare_json_rows(tmp_path, capsys):
    """Base from a package; P = 8 base rollouts collected once (4 start states x G = 2, sampled) feed DPO and
    align the world model; online GRPO spends its own 8; WMPO is trained here in imagination."""
    from test_rl_trainers_imagination import SIZE, tiny_policy, tiny_world_model

    from wmpo_core.cli import main
    from wmpo_core.registry.package import save_package
    from wmpo_core.reward.model import RewardModel, RewardSettings
    from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

    # 64 px: the smallest frame the simulator renders, which `wmpo eval` feeds the policy unresized.
    base = save_package(tiny_policy(image_size=64), tmp_path / "base", data=["demo"])
    tiny_world_model().save_pretrained(tmp_path / "wm")
    # The recipe alignment reuses: the pretraining config, here 2 steps at the tiny model's frame size.
    (tmp_path / "wm" / "train_config.json").write_text(json.dumps(
        {"steps": 2, "batch_size": 2, "image_size": SIZE, "checkpoint_every": 100, "log_every": 1}))
    torch.manual_seed(0)
    RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4, tau=0.5)).save_pretrained(tmp_path / "reward")
    for i in range(2):
        write_episode_bag(tmp_path / "demos", moving_square_episode(4, seed=i, image_size=SIZE, success=True))
    (tmp_path / "wmpo.json").write_text(json.dumps({
        "iterations": 2, "package_every": 1, "groups_per_batch": 1, "starts_per_round": 2, "max_sampling_rounds": 1,
        "horizon": 4,
        "grpo": {"group_size": 2, "minibatch_size": 4}}))
    argv = ["compare", "--task", "lift", "--budget", "8", "--episodes", "2", "--max-steps", "8", "--json",
            "--base", str(base), "--world-model", str(tmp_path / "wm"), "--reward", str(tmp_path / "reward"),
            "--demos", str(tmp_path / "demos"), "--wmpo-config", str(tmp_path / "wmpo.json"),
            "--work", str(tmp_path / "work"), "--temperature", "1.0", "--validation-episodes", "2"]
    code = main(argv)
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-2000:]
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["method"] for r in rows] == ["base", "dpo", "grpo-sim", "wmpo"]
    for r in rows:
        assert {"method", "success_rate", "ci95", "mean_success_length"} <= set(r)
        assert r["episodes"] == 2 and 0.0 <= r["success_rate"] <= 1.0
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["success_rate"] <= hi <= 1.0 and hi > lo
        assert (r["mean_success_length"] is None) == (r["successes"] == 0)
    # Paired against the base on the same start states: wins - losses is the difference in successes.
    assert rows[0]["paired_vs_base"] is None
    for r in rows[1:]:
        pair = r["paired_vs_base"]
        assert pair["wins"] - pair["losses"] == r["successes"] - rows[0]["successes"], r
        assert 0.0 < pair["p_one_sided"] <= 1.0
    for method in ("dpo", "grpo-sim", "wmpo"):
        manifest = json.loads((tmp_path / "work" / method / "policy" / "manifest.json").read_text())
        assert manifest["parent"] == rows[0]["version"], method
        assert manifest["training_data"]["budget"] == 8, method
    # WMPO's imagination starts from the P rollouts (and the toy demos, which have no seed): the rollouts'
    # seeds are in its manifest for the seed check.
    wmpo_data = json.loads((tmp_path / "work" / "wmpo" / "policy" / "manifest.json").read_text())["training_data"]
    assert wmpo_data["seed_ranges"] and all(
        POLICY_ROLLOUT_SEEDS.start <= start < stop <= POLICY_ROLLOUT_SEEDS.stop for _, start, stop in wmpo_data["seed_ranges"])
    assert all(r["temperature"] == 1.0 for r in rows)
    # One set of P real rollouts: G per start state, recorded as bags, used by DPO and by the alignment.
    from wmpo_core.data.bag import episode_dirs, read_metadata

    bags = episode_dirs(tmp_path / "work" / "rollouts" / "episodes")
    seeds = [read_metadata(b).seed for b in bags]
    assert len(bags) == 8 and len(set(seeds)) == 4 and all(seeds.count(s) == 2 for s in set(seeds))
    assert all(POLICY_ROLLOUT_SEEDS.start <= s < POLICY_ROLLOUT_SEEDS.stop for s in seeds)
    dpo_data = json.loads((tmp_path / "work" / "dpo" / "policy" / "manifest.json").read_text())["training_data"]
    assert dpo_data["num_episodes"] == 8
    aligned = json.loads((tmp_path / "work" / "world_model" / "episodes.json").read_text())
    assert aligned["init"] == str(tmp_path / "wm") and len(aligned["episodes"]) == 8
    assert (tmp_path / "work" / "results.jsonl").read_text().strip() == out.strip()
    # WMPO wrote a snapshot after iteration 1: the snapshot and the final package met on validation seeds.
    from wmpo_core.rl.config import VALIDATION_SEEDS

    chosen = json.loads((tmp_path / "work" / "wmpo" / "validation.json").read_text())
    assert [c["package"] for c in chosen["candidates"]] == [str(tmp_path / "work" / "wmpo" / "packages" / "iter_0001"),
                                                          str(tmp_path / "work" / "wmpo" / "policy")]
    assert chosen["seeds"] == [VALIDATION_SEEDS.start, VALIDATION_SEEDS.start + 2]
    assert rows[-1]["package"] == chosen["selected"]
    # A re-run trains nothing and evaluates nothing again: the same rows from the stored evaluations.
    assert len(list((tmp_path / "work" / "evaluations").glob("*.json"))) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file()}
    assert main(argv) == 0
    assert capsys.readouterr().out == out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "results.jsonl")
    # --seed-offset: the same packages on other evaluation start states (nothing is trained again).
    assert main([*argv, "--seed-offset", "5"]) == 0
    moved = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["version"] for r in moved] == [r["version"] for r in rows]
    first = EVALUATION_SEEDS.start + 5
    assert len(list((tmp_path / "work" / "evaluations").glob(f"*-seeds{first}-2-*.json"))) == 4
    # nothing retrained, the earlier evaluations kept as they were (the new ones sit beside them)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "results.jsonl")
    # --jobs 2: two evaluations dropped from the cache run again in two spawned processes, same rows.
    dropped = sorted((tmp_path / "work" / "evaluations").glob(f"*-seeds{first}-2-*.json"))[:2]
    for path in dropped:
        path.unlink()
    assert main([*argv, "--seed-offset", "5", "--jobs", "2"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()] == moved
    assert all(path.is_file() for path in dropped)
    assert main([*argv, "--jobs", "0"]) == 2 and "--jobs" in capsys.readouterr().err
