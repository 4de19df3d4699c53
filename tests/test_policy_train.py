"""Behavior cloning: exact resume from pickle-free checkpoints, and DDP (gloo, 2 processes) gradients."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_dataset_episodes import write_episode_bag
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.loading import load_package
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.policy.train import TrainConfig, bc_loss, latest_checkpoint, train_policy

TINY = dict(num_layers=1, vision_layers=1, hidden_size=64, vision_hidden_size=64, intermediate_size=128,
            vision_intermediate_size=128, text_vocab_size=320)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    rng = np.random.default_rng(0)
    for i in range(4):
        n = 10 + i
        frames = {"agentview": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)}
        actions = rng.normal(0, 0.02, (n, 7))
        actions[:, 6] = np.where(np.arange(n) > n // 2, 1.0, -1.0)
        write_episode_bag(root, f"ep_{i}", frames, actions, rng.normal(size=(n, 9)), success=True)
    return root


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_resume_is_exact_and_checkpoints_hold_no_pickle(bags, tmp_path):
    cfg = VLAConfig(**TINY)
    tc = TrainConfig(steps=4, batch_size=4, save_every=2, warmup_steps=2, val_fraction=0.0, log_every=1)
    straight = train_policy(bags, tmp_path / "a", cfg, tc, progress=False)
    # interrupted after step 2, then resumed to step 4
    train_policy(bags, tmp_path / "b", cfg, TrainConfig(**{**tc.__dict__, "steps": 2}), progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step_0000002"
    resumed = train_policy(bags, tmp_path / "b", None, tc, resume=True, progress=False)
    a, b = _weights(straight), _weights(resumed)
    init = VLAPolicy(cfg).state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a if a[k].shape == init[k].shape)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    state = json.loads((latest_checkpoint(tmp_path / "b") / "trainer_state.json").read_text())
    assert state["step"] == 4 and sorted(state["train_episodes"]) == ["ep_0", "ep_1", "ep_2", "ep_3"]
    files = [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl", ".ckpt"))]
    assert any(f.startswith("events.out.tfevents") for f in files)
    policy = load_package(resumed)
    assert policy.norm_stats.get().mask.tolist() == [True] * 6 + [False]
    assert policy.predict_chunk({"agentview": np.zeros((64, 64, 3), np.uint8)}, "lift the cube").shape == (8, 7)


def _batch(policy, n, seed):
    rng = np.random.default_rng(seed)
    images = [{"agentview": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)} for _ in range(n)]
    words = ["lift the cube", "stack the red cube on the green one", "go"]
    batch = policy.prepare_batch(images, [words[i % 3] for i in range(n)])
    tokens = torch.from_numpy(policy.action_tokenizer.encode(rng.uniform(-1, 1, (n, 56))))
    mask = torch.ones(n, 56, dtype=torch.bool)
    mask[0, 20:] = False  # uneven valid-token counts across ranks: the loss weighting must still be exact
    mask[3, 50:] = False
    return batch, tokens, mask


def _ddp_worker(rank, world, port, out_dir, decoding):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(**TINY, decoding=decoding))
    model = torch.nn.parallel.DistributedDataParallel(policy, find_unused_parameters=decoding != "parallel")
    batch, tokens, mask = _batch(policy, 4, seed=1)
    half = slice(rank * 2, rank * 2 + 2)
    local_mask = mask[half]
    total = local_mask.sum().float()
    dist.all_reduce(total)
    loss, _ = bc_loss(model, batch.index(half), tokens[half], local_mask, total.item(), world)
    loss.backward()
    if rank == 0:
        from safetensors.torch import save_file

        save_file({n: p.grad.contiguous() for n, p in policy.named_parameters() if p.grad is not None},
                  os.path.join(out_dir, "ddp_grads.safetensors"))
    dist.destroy_process_group()
    # Seen here: tearing down the DDP Reducer after the worker returns can deadlock (the gloo
    # group's destructor joins a thread that waits for the GIL). The result is on disk: leave.
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("decoding", ["parallel"])
def test_ddp_two_processes_match_single_process_gradients(tmp_path, decoding):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), decoding), nprocs=2, join=True)
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(**TINY, decoding=decoding))
    batch, tokens, mask = _batch(policy, 4, seed=1)
    loss, _ = bc_loss(policy, batch, tokens, mask)
    loss.backward()
    ddp = load_file(str(tmp_path / "ddp_grads.safetensors"))
    single = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert set(ddp) == set(single) and len(single) > 20
    for name, g in single.items():
        # float32 all-reduce sums in a different order: agreement to 1e-6 absolute / 1e-4 relative
        torch.testing.assert_close(ddp[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_manifest_lists_only_the_episodes_trained_on_and_names_the_skipped(bags, tmp_path):
    import shutil

    data = tmp_path / "data"
    for i in range(3):
        shutil.copytree(bags / f"ep_{i}", data / f"ep_{i}")
    shutil.copytree(bags / "ep_0", data / "ep_0_again")  # the same episode twice
    (data / "ep_broken").mkdir()
    (data / "ep_broken" / "ep_broken_0.mcap").write_bytes(b"not a bag")
    tc = TrainConfig(steps=2, batch_size=2, save_every=2, warmup_steps=1, val_fraction=0.0, log_every=1)
    with pytest.warns(RuntimeWarning, match="skipping episode"):
        package = train_policy(data, tmp_path / "run", VLAConfig(**TINY), tc, progress=False)
    manifest = json.loads((package / "manifest.json").read_text())["training_data"]
    assert manifest["episode_ids"] == ["ep_0", "ep_1", "ep_2"] and manifest["num_episodes"] == 3
    skipped = {s["episode"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"ep_0_again", "ep_broken"} and "duplicate episode id ep_0" in skipped["ep_0_again"]
