"""GRPO in imagination across 2 processes (accelerate on gloo, as `accelerate launch` runs it on CPU).

Real tiny VLA forward/backward, real tiny world model, real DDP all-reduce between processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from test_rl_trainers_imagination import K, frame_rule_reward, solid_starts, tiny_policy, tiny_world_model

from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_loss, grpo_update
from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs

WORLD = 2
CONFIG = GRPOConfig(learning_rate=0.5, max_grad_norm=1e6)  # no clipping of the gradient norm: compare raw steps
SHARDS = (slice(0, 3), slice(3, 5))  # rank 0: rows 0-2 (66 valid tokens), rank 1: rows 3-4 (33)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_rank(rank: int, port: int):
    """What `accelerate launch --cpu --num_processes 2` sets up for each process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def leave(accelerator) -> None:
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
    # As in the BC DDP test: tearing down the gloo group after the worker returns can deadlock on
    # the GIL; the results are on disk, so leave at once.
    os._exit(0)


def fixed_batch(policy) -> GRPOBatch:
    """5 rows with uneven valid-token counts, old log-probs off the current ones (ratios on both clip sides)."""
    rng = np.random.default_rng(3)
    n = 5
    images = [{"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)} for _ in range(n)]
    observations = policy.prepare_batch(images, ["lift the cube"] * n)
    tokens = torch.from_numpy(policy.action_tokenizer.encode(rng.uniform(-1, 1, (n, K * 7))))
    with torch.no_grad():
        logp = policy.log_prob(observations, tokens, temperature=CONFIG.temperature)
    logp_old = logp + torch.from_numpy(rng.normal(0.0, 0.4, logp.shape)).float()
    mask = torch.ones_like(logp)
    mask[1, 10:] = 0
    mask[3, 5:] = 0
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3])
    return GRPOBatch(observations, tokens, logp_old, advantages, mask)


def shard(batch: GRPOBatch, rows: slice) -> GRPOBatch:
    return GRPOBatch(batch.observations.index(rows), batch.action_tokens[rows], batch.logp_old[rows],
                     batch.advantages[rows], batch.mask[rows])


def _update_worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = start_rank(rank, port)
    policy = tiny_policy().eval()  # eval: no dropout, so both runs see the same forward
    batch = shard(fixed_batch(policy), SHARDS[rank])
    module, optimizer = accelerator.prepare(PolicyLogProbs(policy), torch.optim.SGD(policy.parameters(), lr=0.5))
    grpo_update(GRPOPolicy(module), optimizer, batch, CONFIG, accelerator)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, os.path.join(out_dir, "ddp.safetensors"))
    leave(accelerator)


def test_grpo_update_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_update_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp = load_file(str(tmp_path / "ddp.safetensors"))

    single = tiny_policy().eval()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    grpo_update(GRPOPolicy(PolicyLogProbs(single)), torch.optim.SGD(single.parameters(), lr=0.5),
                fixed_batch(single), CONFIG)
    moved = [k for k in before if not torch.equal(before[k], single.state_dict()[k])]
    assert len(moved) > 10
    for name, value in single.state_dict().items():
        # float32 all-reduce sums in another order: agreement to 1e-4 relative / 1e-6 absolute
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-6, msg=name)

    # The check can fail: averaging the two ranks' own token means (what DDP alone does) is another step.
    naive = tiny_policy().eval()
    module = GRPOPolicy(PolicyLogProbs(naive))
    whole = fixed_batch(naive)
    losses = []
    for rows in SHARDS:
        part = shard(whole, rows)
        logp, entropy = module.log_prob_and_entropy(part.observations, part.action_tokens, CONFIG.temperature)
        losses.append(grpo_loss(logp, part.logp_old, part.advantages, part.mask, CONFIG.clip_low,
                                CONFIG.clip_high, entropy)[0])
    ((losses[0] + losses[1]) / 2).backward()
    with torch.no_grad():
        for p in naive.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    gap = max(float((naive.state_dict()[k] - single.state_dict()[k]).abs().max()) for k in moved)
    assert gap > 1e-3, "the shards' token counts must differ enough to tell the weightings apart"


def _trainer_worker(rank: int, port: int, out_dir: str) -> None:
    from wmpo_core.rl.config import WMPOConfig
    from wmpo_core.rl.trainer_imagination import train_wmpo

    accelerator = start_rank(rank, port)
    seen: list[str] = []

    def reward(trajectories):
        seen.extend(hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest() for frames in trajectories)
        return frame_rule_reward(trajectories)

    config = WMPOConfig(grpo=GRPOConfig(group_size=4, learning_rate=1e-3, minibatch_size=8), iterations=2,
                        groups_per_batch=2, starts_per_round=4, max_sampling_rounds=3, horizon=K, checkpoint_every=1)
    policy = tiny_policy()
    train_wmpo(policy, tiny_world_model(), reward, solid_starts(), os.path.join(out_dir, "run"), config,
               accelerator=accelerator, progress=False)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()},
              os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    leave(accelerator)


@pytest.mark.timeout(600)
def test_train_wmpo_on_two_processes_shards_imagination_and_keeps_one_policy(tmp_path):
    mp.spawn(_trainer_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    from wmpo_core.policy.loading import load_package
    from wmpo_core.rl.trainer_imagination import read_log

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    base = tiny_policy().state_dict()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in base), "the ranks' policies drifted apart"
    assert any(not torch.equal(ranks[0][k], base[k]) for k in base), "no update happened"
    # Each rank imagined its own trajectories (its own start states and sampling seeds).
    seen = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in range(WORLD)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    # One log, one package, written by the main process; updates counted over both ranks.
    rows = read_log(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(r["groups_updated"] % WORLD == 0 for r in rows) and sum(r["gradient_steps"] for r in rows) >= 1
    package = load_package(tmp_path / "run" / "policy")
    for name, value in package.state_dict().items():
        assert torch.equal(value, ranks[0][name]), name


def _fsdp_worker(rank: int, port: int, out_dir: str) -> None:
    """In one process group: GRPO in imagination with DDP, with FSDP, and with FSDP stopped after iteration 1 and
    resumed from its checkpoint; each run's final weights saved by rank 0."""
    from torch.distributed.tensor import DTensor

    from wmpo_core.rl.config import WMPOConfig
    from wmpo_core.rl.trainer_imagination import train_wmpo

    accelerator = start_rank(rank, port)
    config = WMPOConfig(grpo=GRPOConfig(group_size=4, learning_rate=1e-3, minibatch_size=8), iterations=2,
                        groups_per_batch=2, starts_per_round=4, max_sampling_rounds=3, horizon=K, checkpoint_every=1)
    sharded_rows = {}
    for name, fsdp, stop in (("ddp", False, None), ("fsdp", True, None), ("resumed", True, 1), ("resumed", True, None)):
        policy = tiny_policy()
        train_wmpo(policy, tiny_world_model(), frame_rule_reward, solid_starts(), os.path.join(out_dir, name), config,
                   accelerator=accelerator, progress=False, fsdp=fsdp, stop_after=stop)
        if fsdp:  # after the rollouts and updates the weights are split again, not left gathered
            weight = policy.language_model.model.embed_tokens.weight
            assert isinstance(weight, DTensor)
            sharded_rows[name] = (weight.to_local().shape[0], weight.shape[0])
        if rank == 0 and stop is None:
            state = policy.state_dict()
            if fsdp:
                state = {k: v.full_tensor() for k, v in state.items()} if rank == 0 else state
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, f"{name}.safetensors"))
        elif fsdp and stop is None:
            for v in policy.state_dict().values():  # the collective rank 0 runs above
                v.full_tensor()
    with open(os.path.join(out_dir, f"sharded{rank}.json"), "w") as f:
        json.dump(sharded_rows, f)
    leave(accelerator)


@pytest.mark.timeout(600)
def test_train_wmpo_fsdp_matches_ddp_and_resumes(tmp_path):
    """`grpo --fsdp`'s trainer on 2 gloo processes: imagination with the weights gathered, updates on shards;
    the package equals the DDP run's to float tolerance, a run stopped after iteration 1 and resumed from its
    gathered checkpoint ends where the uninterrupted FSDP run ends, and the weights are split again after each
    run."""
    from wmpo_core.policy.loading import load_package

    mp.spawn(_fsdp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp, fsdp, resumed = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("ddp", "fsdp", "resumed"))
    base = tiny_policy().state_dict()
    assert sum(not torch.equal(ddp[k], base[k]) for k in base) > 10, "no update happened"
    for name in base:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(resumed[name], fsdp[name], rtol=0, atol=1e-6, msg=name)
    package = load_package(tmp_path / "fsdp" / "policy")  # a plain package of the gathered weights
    for name, value in package.state_dict().items():
        assert torch.equal(value, fsdp[name]), name
    for rank in range(WORLD):
        rows = json.loads((tmp_path / f"sharded{rank}.json").read_text())
        assert all(local < full for local, full in rows.values()), rows
    from wmpo_core.rl.trainer_imagination import read_log

    first = read_log(tmp_path / "fsdp")[0]  # rollouts on the gathered weights, the update on the shards: same numbers
    assert first["gradient_steps"] >= 1 and first["ratio_min"] == first["ratio_max"] == 1.0, first
    checkpoint = sorted((tmp_path / "fsdp" / "checkpoints").glob("step-*"))[-1]
    assert json.loads((checkpoint / "optimizer.json").read_text())["format"] == "fsdp-full"


def _dpo_episodes(root) -> None:
    from test_rl_trainers_imagination import SIZE

    from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

    for i in range(4):
        write_episode_bag(root, moving_square_episode(10, seed=i, image_size=SIZE, success=i % 2 == 0))


def _dpo_config():
    from wmpo_core.rl.config import DPOTrainConfig
    from wmpo_core.rl.dpo import DPOConfig

    # 4 pairs in steps of 3: the first step splits 2 / 1 over the processes, the second leaves one process none
    return DPOTrainConfig(dpo=DPOConfig(beta=0.1, learning_rate=3e-3, max_grad_norm=1e6), budget=4, group_size=1,
                          epochs=2, pairs_per_step=3)


def _dpo_worker(rank: int, port: int, out_dir: str) -> None:
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.rl.rollouts import trajectories_from_episodes
    from wmpo_core.rl.trainer_dpo import train_dpo

    accelerator = start_rank(rank, port)
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        policy = tiny_policy()
        trajectories, ids = trajectories_from_episodes(episode_dirs(os.path.join(out_dir, "episodes")), policy)
        result = train_dpo(policy, trajectories, os.path.join(out_dir, name), _dpo_config(), episode_ids=ids,
                           progress=False, accelerator=accelerator, fsdp=fsdp)
        if rank == 0:
            with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                json.dump(result, f)
    leave(accelerator)


@pytest.mark.timeout(600)
def test_dpo_on_two_processes_ddp_and_fsdp_equal_one_process(tmp_path):
    """`dpo` under `accelerate launch` on 2 gloo processes, with DDP and with FSDP: each process scores its slice
    of every step's pairs (uneven, and one step with no pair for one process), and the package is the one a
    single process writes on all the pairs."""
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.rl.rollouts import trajectories_from_episodes
    from wmpo_core.rl.trainer_dpo import train_dpo

    _dpo_episodes(tmp_path / "episodes")
    policy = tiny_policy()
    trajectories, ids = trajectories_from_episodes(episode_dirs(tmp_path / "episodes"), policy)
    single = train_dpo(policy, trajectories, tmp_path / "single", _dpo_config(), episode_ids=ids, progress=False)
    assert single["pairs"] == 4 and single["steps"] == 4
    mp.spawn(_dpo_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    reference = load_file(str(tmp_path / "single" / "policy" / "model.safetensors"))
    base = tiny_policy().state_dict()
    assert sum(not torch.equal(reference[k], base[k]) for k in base) > 10, "no update happened"
    for name in ("ddp", "fsdp"):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["pairs"] == 4 and result["steps"] == 4
        assert result["final_margin"] == pytest.approx(single["final_margin"], rel=1e-3, abs=1e-5)
        weights = load_file(str(tmp_path / name / "policy" / "model.safetensors"))
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


def test_fsdp_is_refused_in_one_process_and_with_lora(tmp_path):
    """`grpo --fsdp` / `dpo --fsdp` in one process say how to launch; FSDP with LoRA adapters is refused."""
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.policy.fsdp import check_setup
    from wmpo_core.rl.config import WMPOConfig
    from wmpo_core.rl.rollouts import trajectories_from_episodes
    from wmpo_core.rl.trainer_dpo import train_dpo
    from wmpo_core.rl.trainer_imagination import train_wmpo

    launch = "--fsdp: needs 2 or more processes (accelerate launch"
    with pytest.raises(ValueError, match=launch.replace("(", r"\(")):
        train_wmpo(tiny_policy(), tiny_world_model(), frame_rule_reward, solid_starts(), tmp_path / "grpo",
                   WMPOConfig(iterations=1, horizon=K), progress=False, fsdp=True)
    _dpo_episodes(tmp_path / "episodes")
    policy = tiny_policy()
    trajectories, ids = trajectories_from_episodes(episode_dirs(tmp_path / "episodes"), policy)
    with pytest.raises(ValueError, match=launch.replace("(", r"\(")):
        train_dpo(policy, trajectories, tmp_path / "dpo", _dpo_config(), episode_ids=ids, progress=False, fsdp=True)
    assert not (tmp_path / "dpo").exists() and not (tmp_path / "grpo" / "checkpoints").exists()
    with pytest.raises(ValueError, match="--fsdp with --lora-rank is not supported"):
        check_setup(2, lora=True)
    check_setup(2)  # several processes, no adapters: fine
