"""GRPO with LoRA (peft) + bf16 on an imported OpenVLA-OFT miniature: a few real clipped-GRPO steps through the
same module the imagination trainer uses, ratio exactly 1 before the first step, only the adapters move, the
adapters resume from safetensors, and the merge gives one plain package that verifies and loads."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_policy_oft import INSTRUCTION, checkpoint, keys, oft_checkpoints  # noqa: F401  (module fixtures)
from test_policy_openvla import IMG
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.cli import main as wmpo
from wmpo_core.policy.loading import load_package
from wmpo_core.policy.lora import (
    LoRASettings,
    apply_lora,
    export_state_dict,
    has_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    trainable_parameters,
)
from wmpo_core.registry.package import save_package, verify_package_contents
from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_update
from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs

pytest.importorskip("peft")
BASE = "language_model.model.layers.0.self_attn.q_proj.weight"


def _optimizer_bytes(optimizer):
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def test_grpo_steps_with_lora_bf16_then_merged_package(oft_checkpoints, keys, tmp_path, capsys):  # noqa: F811
    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft",
                 "--dtype", "bfloat16"]) == 0
    policy = load_package(pkg)
    full = trainable_parameters(policy)
    base_before = policy.state_dict()[BASE].clone()
    apply_lora(policy, LoRASettings(rank=4))
    adapters = trainable_parameters(policy)
    assert 0 < adapters < full / 10 and has_lora(policy)
    assert {p.dtype for n, p in policy.named_parameters() if ".lora_" not in n} == {torch.bfloat16}

    rng = np.random.default_rng(0)
    images = [{"agentview": rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)} for _ in range(4)]
    batch = policy.prepare_batch(images, [INSTRUCTION] * 4)
    config = GRPOConfig(learning_rate=1e-2, minibatch_size=4, temperature=1.6)
    policy.eval()  # rollout
    tokens, logp_old = policy.sample(batch, temperature=config.temperature, generator=torch.Generator().manual_seed(0))
    grpo_batch = GRPOBatch(batch, tokens, logp_old, torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.ones_like(logp_old))
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate)
    grpo_policy = GRPOPolicy(PolicyLogProbs(policy))
    policy.train()  # update
    stats = [grpo_update(grpo_policy, optimizer, grpo_batch, config) for _ in range(3)]
    assert stats[0]["ratio_min"] == 1.0 and stats[0]["ratio_max"] == 1.0  # same numerics at rollout and update
    assert stats[-1]["ratio_min"] != 1.0 or stats[-1]["ratio_max"] != 1.0  # the adapters moved the policy
    assert torch.equal(policy.state_dict()[BASE.replace(".weight", ".base_layer.weight")], base_before)  # frozen
    lora_optimizer_bytes = _optimizer_bytes(optimizer)

    # adapters resume from plain safetensors
    save_file(lora_state_dict(policy), str(tmp_path / "adapters.safetensors"))
    resumed = apply_lora(load_package(pkg), LoRASettings(rank=4))
    load_lora_state_dict(resumed, load_file(str(tmp_path / "adapters.safetensors")))
    policy.eval()
    resumed.eval()
    with torch.no_grad():
        adapted = policy.log_prob(batch, tokens, temperature=1.6)
        torch.testing.assert_close(resumed.log_prob(batch, tokens, temperature=1.6), adapted, atol=0, rtol=0)

    # merged at export: one plain bf16 package with the original tensor names
    exported = export_state_dict(policy)  # what save_package writes while the adapters keep training
    merge_lora(policy)
    merged_state = policy.state_dict()
    assert set(exported) == set(merged_state)
    for k, v in merged_state.items():
        torch.testing.assert_close(exported[k].float(), v.float(), atol=1e-2, rtol=1e-2)
    assert not has_lora(policy)
    out = save_package(policy, tmp_path / "merged", parent=pkg.name)
    verify_package_contents(out)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(pkg / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys()) and {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    merged = load_package(out).eval()
    assert not torch.equal(merged.state_dict()[BASE], base_before)
    with torch.no_grad():
        torch.testing.assert_close(merged.log_prob(batch, tokens, temperature=1.6), adapted, atol=0.05, rtol=0)

    # full fine-tuning of the same model, one step, for the memory ratio
    dense = load_package(pkg)
    dense_optimizer = torch.optim.AdamW(dense.parameters(), lr=1e-6)
    dense.train()
    grpo_update(GRPOPolicy(PolicyLogProbs(dense)), dense_optimizer, grpo_batch, config)
    ratio = {"trainable_params_lora": adapters, "trainable_params_full": full,
             "optimizer_bytes_lora": lora_optimizer_bytes, "optimizer_bytes_full": _optimizer_bytes(dense_optimizer)}
    assert ratio["optimizer_bytes_lora"] * 10 < ratio["optimizer_bytes_full"]
    print(json.dumps(ratio))


def test_grpo_sim_command_with_lora_and_bf16_writes_a_plain_package(oft_checkpoints, keys, tmp_path, capsys):  # noqa: F811
    d, _ = oft_checkpoints
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key), "--variant", "oft"]) == 0
    config = tmp_path / "grpo.json"
    config.write_text(json.dumps({"grpo": {"group_size": 2, "minibatch_size": 2}, "groups_per_iteration": 1}))
    rc = wmpo(["grpo-sim", "--policy", str(pkg), "--task", "lift", "--budget", "2", "--max-steps", "8",
               "--config", str(config), "--out", str(tmp_path / "run"), "--lora-rank", "4", "--dtype", "bfloat16",
               "--sign", str(keys.private_key), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    out = tmp_path / "run" / "policy"
    assert wmpo(["verify", str(out), "--public-key", str(keys.public_key)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(pkg / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys())  # adapters merged: the robot loads one plain package
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert load_package(out).manifest["parent"] == load_package(pkg).version


def test_rl_commands_refuse_a_continuous_head_package(oft_checkpoints, keys, tmp_path, capsys):  # noqa: F811
    _, d = oft_checkpoints  # the OFT miniature with an L1-regression head: its actions have no log-probs
    pkg = tmp_path / "pkg"
    assert wmpo(["import-openvla", str(d), "--out", str(pkg), "--key", str(keys.private_key)]) == 0
    capsys.readouterr()
    assert wmpo(["grpo-sim", "--policy", str(pkg), "--task", "lift", "--budget", "8", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    assert "config.action_head is 'l1_regression'; GRPO and DPO need the discrete action tokens" in capsys.readouterr().err


def test_train_policy_init_with_lora_bf16_resumes_exactly_and_merges(oft_checkpoints, keys, tmp_path, capsys):  # noqa: F811
    """`train-policy --init PKG --lora-rank R` on a bf16 OFT package: only the adapters train (the frozen base
    is what each checkpoint keeps beside them, and only the adapters have optimizer state); a run stopped after
    step 1 and resumed ends bit-exactly where the uninterrupted run ends; the package holds merged bf16 weights
    under the base's names and verifies; a resume with another rank is refused."""
    from test_policy_oft import bf16_package_and_bags

    pkg, episodes = bf16_package_and_bags(oft_checkpoints[0], keys, tmp_path)
    (tmp_path / "tc.json").write_text(json.dumps({"val_fraction": 0.0, "warmup_steps": 1, "lr": 1e-2,
                                                  "keep_checkpoints": 3}))

    def train(run, steps, *extra):
        capsys.readouterr()
        rc = wmpo(["train-policy", "--episodes", str(episodes), "--out", str(tmp_path / run), "--init", str(pkg),
                   "--train-config", str(tmp_path / "tc.json"), "--steps", str(steps), "--batch-size", "2",
                   "--save-every", "1", "--no-progress", *extra])
        return rc, capsys.readouterr()

    rc, out = train("full", 2, "--lora-rank", "4")
    assert rc == 0, out.err[-2000:]
    tuned = tmp_path / "full" / "package_step0000002"
    assert train("resumed", 1, "--lora-rank", "4")[0] == 0
    rc, out = train("resumed", 2, "--lora-rank", "8", "--resume")
    assert rc == 2 and "resume it with --lora-rank 4" in out.err
    assert train("resumed", 2, "--lora-rank", "4", "--resume")[0] == 0

    base = load_file(str(pkg / "model.safetensors"))
    weights = load_file(str(tuned / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "package_step0000002" / "model.safetensors"))
    assert set(weights) == set(base) and {v.dtype for v in weights.values()} == {torch.bfloat16}
    for k in base:
        assert torch.equal(resumed[k], weights[k]), k
    changed = {k for k in base if not torch.equal(base[k], weights[k])}
    assert changed and all(k.startswith("language_model.model.layers.") for k in changed), sorted(changed)[:5]
    assert any(k.endswith("q_proj.weight") for k in changed)
    verify_package_contents(tuned)
    assert load_package(tuned).manifest["parent"] == load_package(pkg).version

    step1 = tmp_path / "full" / "checkpoints" / "step_0000001"
    frozen = load_file(str(step1 / "model.safetensors"))
    assert set(frozen) == set(base) and all(torch.equal(frozen[k], base[k]) for k in base)  # the base, untouched
    adapters = load_file(str(step1 / "adapters.safetensors"))
    assert adapters and all(".lora_" in k for k in adapters)
    assert {v.dtype for v in adapters.values()} == {torch.float32}  # trainable in fp32 beside the bf16 base
    moments = load_file(str(step1 / "optimizer.safetensors"))
    assert len(moments) == 3 * len(adapters)  # step, exp_avg, exp_avg_sq of each adapter tensor, nothing else
