"""FSDP (torch's fully_shard) for policy training, at tiny scale on 2 gloo CPU processes: every weight is
really split between the processes, and one sharded step (BC, and GRPO through the trainer's own
PolicyLogProbs / grpo_update with accelerate's process group) gives the gradients and weights of the same
step in one process on the whole batch. The batch splits unevenly in valid tokens, so the loss weighting
over processes is checked too."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from test_policy_train import TINY, _batch, _free_port, bags  # noqa: F401  (module fixture)
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)
from test_training_options import _grpo_batch, _policy

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.fsdp import full_gradients, full_state_dict, shard_policy, shard_units
from wmpo_core.policy.train import bc_loss
from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_update
from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs

LR = 1e-3
GRPO = GRPOConfig(temperature=1.6, learning_rate=LR)
BC_ROWS = (slice(0, 2), slice(2, 4))  # rank r's samples of the BC batch of 4 (uneven valid tokens)
GRPO_ROWS = (slice(0, 3), slice(3, 5))  # rank r's rows of the GRPO batch of 5


def _bc_step(model, policy, rows=slice(None), world=1, total=None):
    batch, tokens, mask = _batch(policy, 4, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loss, _ = bc_loss(model, batch.index(rows), tokens[rows], mask[rows], total, world)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    optimizer.step()
    return mask


def _grpo_step(module, rows=slice(None), accelerator=None):
    full = _grpo_batch(_policy(3))  # the rollout's batch, from an unsharded copy of the same weights
    part = GRPOBatch(full.observations.index(rows), full.action_tokens[rows], full.logp_old[rows],
                     full.advantages[rows], full.mask[rows])
    optimizer = torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=0.0)
    return grpo_update(GRPOPolicy(module), optimizer, part, GRPO, accelerator)


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist
    from accelerate import Accelerator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)  # the trainers' process group (gloo)
    assert accelerator.num_processes == world and dist.get_backend() == "gloo"
    out = {}

    policy = _policy(0)
    # FSDP splits dim 0: a weight with at least `world` rows is spread over the processes
    split = {n: p.numel() for n, p in policy.named_parameters() if p.shape[0] >= world}
    shard_policy(policy)
    local = {n: p.to_local().numel() for n, p in policy.named_parameters()}
    assert len(split) > 20 and all(local[n] < split[n] for n in split), "not sharded"
    # each block its own unit: only one block's full weights exist at a time (not the whole model at once)
    from torch.distributed.fsdp import FSDPModule

    blocks = [*policy.language_model.model.layers, *policy.vision.layers]
    assert all(isinstance(b, FSDPModule) for b in blocks) and isinstance(policy, FSDPModule)
    _, _, mask = _batch(policy, 4, seed=1)
    total = mask[BC_ROWS[rank]].sum().float()
    dist.all_reduce(total)
    _bc_step(policy, policy, BC_ROWS[rank], world, total.item())
    out.update({f"bc.grad.{k}": v for k, v in full_gradients(policy).items()})
    state = full_state_dict(policy)
    out.update({f"bc.weight.{k}": v for k, v in state.items()})

    policy = _policy(3)
    module = shard_policy(policy, root=PolicyLogProbs(policy))
    stats = _grpo_step(module, GRPO_ROWS[rank], accelerator)
    out.update({f"grpo.grad.{k}": v for k, v in full_gradients(module).items()})
    out.update({f"grpo.weight.{k}": v for k, v in full_state_dict(module).items()})
    out["grpo.clip"] = torch.tensor([stats["clip_frac_low"], stats["clip_frac_high"]])
    if rank == 0:
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, "fsdp.safetensors"))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # as in test_policy_train: the gloo group's teardown after return can deadlock


def _split(saved, prefix):
    return {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}


def test_shard_units_are_the_transformers_blocks():
    policy = _policy(0)
    units = shard_units(policy)
    assert {"LlamaDecoderLayer", "ViTLayer"} <= {type(m).__name__ for m in units}  # ViT also names its embeddings
    assert all(any(layer is u for u in units) for layer in [*policy.language_model.model.layers, *policy.vision.layers])


def test_fsdp_two_processes_match_one_process_step(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = load_file(str(tmp_path / "fsdp.safetensors"))

    policy = _policy(0)
    _bc_step(policy, policy)
    single_grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    single_weights = dict(policy.state_dict())
    sharded_grads, sharded_weights = _split(saved, "bc.grad."), _split(saved, "bc.weight.")
    assert set(sharded_grads) == set(single_grads) and len(single_grads) > 20
    for name, g in single_grads.items():  # float32 sums in another order: as the DDP test's tolerance
        torch.testing.assert_close(sharded_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert set(sharded_weights) == set(single_weights)
    moved = 0
    for name, w in single_weights.items():
        # AdamW's first step is about lr * sign(gradient): a gradient within float noise of 0 may differ by ~lr
        torch.testing.assert_close(sharded_weights[name], w, rtol=0, atol=LR / 20, msg=name)
        moved += not torch.equal(w, _policy(0).state_dict()[name])
    assert moved > 20

    policy = _policy(3)
    module = PolicyLogProbs(policy)
    stats = _grpo_step(module)
    assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0
    single_grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    sharded_grads = _split(saved, "grpo.grad.")
    assert set(sharded_grads) == set(single_grads) and len(single_grads) > 20
    for name, g in single_grads.items():
        torch.testing.assert_close(sharded_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    sharded_weights = _split(saved, "grpo.weight.")
    for name, w in module.state_dict().items():
        torch.testing.assert_close(sharded_weights[name], w, rtol=0, atol=LR / 20, msg=name)
    assert np.all(saved["grpo.clip"].numpy() >= 0)


def test_shard_policy_without_a_process_group_says_so():
    with pytest.raises(ValueError, match="FSDP needs torch.distributed initialized"):
        shard_policy(_policy(0))


def _train_worker(rank, world, port, bags_dir, run_dir, steps, resume):
    from wmpo_core.policy.train import TrainConfig, train_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tc = TrainConfig(**TRAIN, steps=steps, fsdp=True)
    train_policy(bags_dir, run_dir, VLAConfig(**TINY), tc, resume=resume, progress=False)
    os._exit(0)


TRAIN = dict(batch_size=4, warmup_steps=1, val_fraction=0.0, lr=LR, save_every=1, keep_checkpoints=3)


def test_train_policy_fsdp_matches_one_process_and_resumes(bags, tmp_path):  # noqa: F811
    """`train-policy --fsdp` on 2 processes: 2 steps take the weights where one process's 2 steps take them; an
    FSDP run stopped after step 1 and resumed from its checkpoint (gathered weights and optimizer state) ends
    where the uninterrupted FSDP run ends; checkpoints and the package are plain, loadable packages."""
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.train import TrainConfig, train_policy

    def fsdp_run(run, steps, resume=False):
        mp.spawn(_train_worker, args=(2, _free_port(), str(bags), str(run), steps, resume), nprocs=2, join=True)

    fsdp_run(tmp_path / "fsdp", 2)
    fsdp_run(tmp_path / "resumed", 1)
    fsdp_run(tmp_path / "resumed", 2, resume=True)
    single = train_policy(bags, tmp_path / "single", VLAConfig(**TINY), TrainConfig(**TRAIN, steps=2), progress=False)
    weights = {name: load_file(str(tmp_path / name / "package_step0000002" / "model.safetensors"))
               for name in ("fsdp", "resumed")}
    reference = load_file(str(single / "model.safetensors"))
    init = _policy(0).state_dict()
    assert set(weights["fsdp"]) == set(reference) and sum(not torch.equal(reference[k], init[k]) for k in init) > 20
    for name, w in reference.items():
        torch.testing.assert_close(weights["fsdp"][name], w, rtol=0, atol=2 * LR / 20, msg=name)
        torch.testing.assert_close(weights["resumed"][name], weights["fsdp"][name], rtol=0, atol=1e-6, msg=name)
    step1 = tmp_path / "fsdp" / "checkpoints" / "step_0000001"
    assert load_package(tmp_path / "fsdp" / "package_step0000002").num_parameters() == _policy(0).num_parameters()
    state = load_file(str(step1 / "optimizer.safetensors"))
    assert {k.rsplit("::", 1)[1] for k in state} == {"step", "exp_avg", "exp_avg_sq"}
    assert {k.rsplit("::", 1)[0] for k in state} == set(reference)  # full (not sharded) state, named per weight


def test_train_policy_fsdp_in_one_process_says_how_to_launch(bags, tmp_path, capsys):  # noqa: F811
    from wmpo_core.cli import main as wmpo

    code = wmpo(["train-policy", "--episodes", str(bags), "--out", str(tmp_path / "run"), "--steps", "1", "--fsdp",
                 "--no-progress"])
    assert code == 2 and "--fsdp: needs 2 or more processes (accelerate launch" in capsys.readouterr().err
