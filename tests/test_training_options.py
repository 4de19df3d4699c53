"""--micro-batch, --grad-checkpointing and --device for policy training, on a tiny VLA with real forward and
backward passes: a step run in micro-batches equals the full-batch step (BC through `train_policy`, a GRPO
update, a DPO update), checkpointing really recomputes the layers and leaves the gradients unchanged, and a
device that is not there stops a command with one line naming it."""

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_policy_train import TINY, _batch, bags  # noqa: F401  (module fixture)
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.policy.train import TrainConfig, train_policy
from wmpo_core.policy.training_options import enable_gradient_checkpointing, micro_slices
from wmpo_core.rl.dpo import DPOConfig, dpo_update
from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_update


def _policy(seed=0, **extra):
    torch.manual_seed(seed)
    return VLAPolicy(VLAConfig(**TINY, **extra))


def _grads(policy):
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def _assert_same(a, b, rtol=1e-5, atol=1e-7):
    assert set(a) == set(b) and len(a) > 20
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def test_micro_slices_cover_the_batch_once():
    assert [(s.start, s.stop) for s in micro_slices(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    assert [(s.start, s.stop) for s in micro_slices(5, 0)] == [(0, 5)]
    assert [(s.start, s.stop) for s in micro_slices(3, 8)] == [(0, 3)]


def test_train_policy_micro_batch_step_equals_full_batch_step(bags, tmp_path, monkeypatch):  # noqa: F811
    """One optimizer step of 4 samples run as 2 + 2 (gradient accumulation), and as 1 + 1 + 1 + 1 with
    checkpointing, takes the step of one pass of 4. The gradient is read from the checkpoint's AdamW state
    (exp_avg = (1 - beta1) * gradient after one step; clipping off, so its scale counts); the weights moved."""
    cfg = VLAConfig(**TINY)
    base = dict(steps=1, batch_size=4, warmup_steps=1, val_fraction=0.0, lr=1e-3, grad_clip=1e6)
    runs = {"full": TrainConfig(**base), "micro": TrainConfig(**base, micro_batch=2),
            "ckpt": TrainConfig(**base, micro_batch=1, grad_checkpointing=True)}
    import wmpo_core.policy.train as train_module

    real_bc_loss, rows_seen = train_module.bc_loss, []

    def counting_bc_loss(model, batch, *args, **kwargs):  # the real loss; records the rows of each forward pass
        rows_seen.append(len(batch))
        return real_bc_loss(model, batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "bc_loss", counting_bc_loss)
    weights, grads, forwards = {}, {}, {}
    for name, tc in runs.items():
        rows_seen.clear()
        package = train_policy(bags, tmp_path / name, cfg, tc, progress=False, device="cpu")
        forwards[name] = list(rows_seen)
        weights[name] = load_file(str(package / "model.safetensors"))
        state = load_file(str(tmp_path / name / "checkpoints" / "step_0000001" / "optimizer.safetensors"))
        grads[name] = {k: v for k, v in state.items() if k.endswith(".exp_avg")}
    assert forwards == {"full": [4], "micro": [2, 2], "ckpt": [1, 1, 1, 1]}
    init = _policy().state_dict()
    assert len([k for k in init if not torch.equal(weights["full"][k], init[k])]) > 20
    for name in ("micro", "ckpt"):
        _assert_same(grads[name], grads["full"], rtol=1e-5, atol=1e-9)
        # AdamW's first step is about lr * sign(gradient): a gradient within float noise of 0 may move by ~lr
        _assert_same(weights[name], weights["full"], rtol=0, atol=1e-5)
    assert (tmp_path / "micro" / "train_config.json").read_text().count('"micro_batch": 2') == 1


def _grpo_batch(policy):
    batch, tokens, mask = _batch(policy, 5, seed=2)
    with torch.no_grad():
        logp = policy.log_prob(batch, tokens, temperature=1.6)
    noise = torch.from_numpy(np.random.default_rng(4).normal(0, 0.3, logp.shape)).float()
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2, 0.3])
    # the old log-probs differ from the current ones: both clip bounds are active on some tokens
    return GRPOBatch(batch, tokens, logp + noise, advantages, mask)


def test_grpo_micro_batch_step_equals_full_batch_step():
    config = GRPOConfig(temperature=1.6, learning_rate=1e-3, micro_batch=0)
    results = {}
    for micro in (0, 2):
        policy = _policy(3)
        rows = []
        policy.language_model.model.register_forward_pre_hook(lambda _, a, kw, r=rows: r.append(len(kw["inputs_embeds"])),
                                                               with_kwargs=True)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
        step = grpo_update(policy, optimizer, _grpo_batch(_policy(3)), GRPOConfig(**{**config.__dict__,
                                                                                   "micro_batch": micro}))
        results[micro] = (step, _grads(policy), {n: p.detach().clone() for n, p in policy.named_parameters()})
        assert rows == ([5] if micro == 0 else [2, 2, 1]), rows
    (s0, g0, w0), (s2, g2, w2) = results[0], results[2]
    assert s0["clip_frac_low"] > 0 and s0["clip_frac_high"] > 0
    _assert_same(g2, g0)
    _assert_same(w2, w0, rtol=0, atol=1e-5)  # AdamW's first step: ~lr * sign(gradient), lr = 1e-3
    for key in s0:
        assert s2[key] == pytest.approx(s0[key], rel=1e-5, abs=1e-6), key


def test_dpo_micro_batch_step_equals_full_batch_step():
    batch, tokens, mask = _batch(_policy(), 6, seed=5)
    chosen, rejected = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    reference = _policy(9)
    with torch.no_grad():
        ref = reference.log_prob(batch, tokens).sum(-1)
    results = {}
    for micro in (0, 1):
        policy = _policy(0)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)

        calls = []

        def logps(idx, policy=policy, calls=calls):
            calls.append(len(idx))
            return (policy.log_prob(batch.index(idx), tokens[idx]) * mask[idx]).sum(-1)

        stats = dpo_update(logps, optimizer, chosen, rejected, ref[chosen], ref[rejected],
                           DPOConfig(beta=0.1, micro_batch=micro))
        results[micro] = (stats, _grads(policy))
        assert calls == ([3, 3] if micro == 0 else [1] * 6), calls
    (s0, g0), (s1, g1) = results[0], results[1]
    assert s0["loss"] != pytest.approx(np.log(2.0))  # policy and reference differ: a real gradient
    _assert_same(g1, g0)
    for key in s0:
        assert s1[key] == pytest.approx(s0[key], rel=1e-5, abs=1e-6), key


def test_gradient_checkpointing_recomputes_layers_and_keeps_gradients():
    """With checkpointing the first decoder layer and the first vision layer run again in the backward pass
    (hooks on modules inside them fire twice per step); the gradients are those without it."""
    plain, checkpointed = _policy(1), _policy(1)
    assert enable_gradient_checkpointing(checkpointed) == ["language_model", "vision"]
    batch, tokens, mask = _batch(plain, 4, seed=6)
    grads = {}
    for name, policy in (("plain", plain), ("checkpointed", checkpointed)):
        calls = {"lm": 0, "vision": 0}
        # pre-hooks inside a layer: transformers checkpoints a layer's forward (its own hooks run once), and
        # torch stops a recomputation once the saved tensors are back (a post-hook of the last module may not run)
        policy.language_model.model.layers[0].mlp.register_forward_pre_hook(
            lambda *_, c=calls: c.__setitem__("lm", c["lm"] + 1))
        policy.vision.layers[0].attention.register_forward_pre_hook(
            lambda *_, c=calls: c.__setitem__("vision", c["vision"] + 1))
        policy.train()
        policy(batch, tokens, mask)["loss"].backward()
        grads[name] = _grads(policy)
        assert calls == ({"lm": 1, "vision": 1} if name == "plain" else {"lm": 2, "vision": 2}), (name, calls)
    _assert_same(grads["checkpointed"], grads["plain"])
    frozen = copy.deepcopy(checkpointed).eval()  # inference: no recomputation, same actions
    image = {"agentview": np.zeros((64, 64, 3), np.uint8)}
    np.testing.assert_array_equal(frozen.predict_chunk(image, "go"), plain.eval().predict_chunk(image, "go"))


def test_a_missing_gpu_or_a_bad_micro_batch_stops_the_command(bags, tmp_path, capsys):  # noqa: F811
    from policy_packages import build_package

    from wmpo_core.cli import main as wmpo

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = wmpo(["train-policy", "--episodes", str(bags), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--device", "cuda", "--no-progress"])
    assert code == 2 and "device 'cuda': this machine has 0 CUDA device(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    code = wmpo(["train-policy", "--episodes", str(bags), "--out", str(tmp_path / "run"), "--micro-batch", "-2",
                 "--no-progress"])
    assert code == 2 and "micro_batch" in capsys.readouterr().err
    pkg = build_package(tmp_path / "pkg", 0, "opts-0", None, **TINY)
    for flags, message in ((["--device", "cuda:1"], "device 'cuda:1': this machine has 0 CUDA device(s)"),
                           (["--device", "tpu"], "device 'tpu': expected auto, cpu, cuda or cuda:N"),
                           (["--micro-batch", "-1"], "--micro-batch: expected 0 (off) or a positive number")):
        code = wmpo(["dpo", "--policy", str(pkg), "--out", str(tmp_path / "dpo"), "--task", "lift", "--budget", "2",
                     *flags])
        assert code == 2 and message in capsys.readouterr().err, flags
    assert not (tmp_path / "dpo").exists()
