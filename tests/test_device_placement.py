"""Device placement of imagination, reward scoring and the model commands, checked without a GPU.

The models run under :class:`simulated_gpu.SimulatedGPU`: every number is computed on the CPU, but
tensors moved to "cuda" are tracked, an operation mixing them with host tensors is a violation (as
CUDA would raise), and every copy back to the host is recorded. Imagination must keep the world
model, the reward model and the policy on the device, every module must see only device tensors,
the policy must resize frames there, and frames may come back to the host once, at the end. A
planted ``.cpu()`` or device-less ``torch.zeros`` fails the check (shown below by planting them).
With a real GPU the same check runs on it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from simulated_gpu import SimulatedGPU
from test_world_model import SIZE, C, K, tiny_world_model

from wmpo_core.cli import main as wmpo
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.reward.model import RewardModel, RewardSettings
from wmpo_core.rl.rollouts import StartStates, VideoReward, imagine_trajectories
from wmpo_core.world_model.imagine import VLAImaginationPolicy, imagine_group
from wmpo_core.world_model.synthetic import moving_square_episode, moving_square_episodes, write_episode_bag

GROUP, HORIZON = 3, 2 * K


def _policy(image_size: int = 48) -> VLAPolicy:
    """A tiny VLA policy reading larger frames than the world model makes, so imagination resizes them."""
    torch.manual_seed(0)
    return VLAPolicy(VLAConfig(image_size=image_size, patch_size=8, vision_hidden_size=32, vision_layers=1,
                               vision_heads=2, vision_intermediate_size=64, hidden_size=32, num_layers=1, num_heads=2,
                               num_kv_heads=2, intermediate_size=64, chunk_size=K, max_text_tokens=24)).eval()


def _reward() -> RewardModel:
    torch.manual_seed(1)
    return RewardModel.tiny(RewardSettings(image_size=SIZE, clip_len=4), patch_size=8, hidden_size=32,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


class ModuleInputs:
    """Global forward hooks: every module called, and the tensors it saw that were not on the device."""

    def __init__(self, on_device):
        self.on_device = on_device
        self.called: set[str] = set()
        self.off_device: list[str] = []

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, kwargs, output):
        name = type(module).__name__
        self.called.add(name)
        leaves = torch.utils._pytree.tree_leaves((args, kwargs, output))
        owned = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for t in [x for x in leaves if isinstance(x, torch.Tensor) and x.dim() > 0] + owned:
            if not self.on_device(t):
                self.off_device.append(f"{name}: {tuple(t.shape)}")


def _imagine_and_score(wm, policy, reward, start):
    """One imagined group, then the reward model scoring it (as GRPO's rollouts do)."""
    result = imagine_group(wm, VLAImaginationPolicy(policy, "agentview", 1.6), start, "lift the cube", HORIZON,
                           group_size=GROUP, seed=5)
    return result, reward.trajectory_scores(list(result.frames[:, C - 1 :]))


def _run_on_simulated_gpu(wm, policy, reward, start):
    sim = SimulatedGPU(watch=("interpolate",))
    with sim, ModuleInputs(sim.on_gpu) as seen:
        wm.to("cuda")
        policy.to("cuda")
        reward.classifier.to("cuda")
        result, scores = _imagine_and_score(wm, policy, reward, start)
    return sim, seen, result, scores


def _check_on_device(sim, seen, wm, policy, reward):
    """What a device-resident imagination and scoring must look like (returns the problems found)."""
    problems = [f"violation: {v}" for v in sim.violations]
    problems += [f"module input/output/weight off the device: {x}" for x in seen.off_device[:10]]
    modules = [wm.vae, wm.transformer, policy, reward.classifier]
    problems += [f"weight left on the host: {tuple(t.shape)}" for m in modules
                 for t in [*m.parameters(), *m.buffers()] if not sim.on_gpu(t)]
    frame = SIZE * SIZE * 3
    big = [c for c in sim.host_copies if int(np.prod(c.shape)) >= frame]
    if [c.shape for c in big] != [(GROUP, C + HORIZON, SIZE, SIZE, 3)]:
        problems.append(f"frame-sized copies to the host {[(c.shape, c.where) for c in big]}; expected only the "
                        f"final frames {(GROUP, C + HORIZON, SIZE, SIZE, 3)}")
    resized = sum(n for site, n in sim.watched.items() if "modeling_vla.py" in site)
    if resized != GROUP * (HORIZON // K):
        problems.append(f"the policy resized {resized} frames on the device, expected {GROUP * (HORIZON // K)}")
    return problems


def test_imagination_and_reward_scoring_stay_on_the_device():
    wm, policy, reward = tiny_world_model(predict_residual=True), _policy(), _reward()
    start = moving_square_episodes(1, 12, seed=0, image_size=SIZE)[0].frames[None, :1]
    expected, expected_scores = _imagine_and_score(wm, policy, reward, start)

    sim, seen, result, scores = _run_on_simulated_gpu(wm, policy, reward, start)
    assert {"Encoder", "Decoder", "VideoDiffusionTransformer", "LlamaModel", "VideoMAEForVideoClassification"} <= seen.called
    assert _check_on_device(sim, seen, wm, policy, reward) == []
    assert result.tokens.shape == (GROUP, HORIZON // K, K * 7) and sim.on_gpu(result.tokens)
    # the simulation changes no number
    np.testing.assert_array_equal(result.frames, expected.frames)
    np.testing.assert_array_equal(result.actions, expected.actions)
    assert torch.equal(result.tokens, expected.tokens) and torch.equal(result.log_probs, expected.log_probs)
    np.testing.assert_array_equal(scores, expected_scores)


def test_grpo_rollouts_stay_on_the_device():
    """The trainer's own rollout function: imagination, then VideoReward scoring of every trajectory."""
    wm, policy, reward = tiny_world_model(predict_residual=True), _policy(), _reward()
    frames = np.stack([ep.frames[:1] for ep in moving_square_episodes(2, 4, seed=3, image_size=SIZE)])
    starts = StartStates(frames, ["lift the cube"] * 2, ["a", "b"])
    sim = SimulatedGPU()
    with sim, ModuleInputs(sim.on_gpu) as seen:
        wm.to("cuda")
        policy.to("cuda")
        reward.classifier.to("cuda")
        batch = imagine_trajectories(wm, policy, VideoReward(reward), starts, [0, 1], HORIZON, 2, 1.6, seed=0)
    assert sim.violations == [] and seen.off_device == []
    assert "VideoMAEForVideoClassification" in seen.called and len(batch.reward) == 4
    assert sim.on_gpu(batch.action_tokens) and sim.on_gpu(batch.logp_old)


def test_the_check_fails_on_a_planted_host_copy_or_device_less_tensor(monkeypatch):
    """The check is not vacuous: the two mistakes it exists for each fail it."""
    import wmpo_core.world_model.model as model_module
    from wmpo_core.world_model.model import WorldModel

    start = moving_square_episodes(1, 12, seed=0, image_size=SIZE)[0].frames[None, :1]
    decode = model_module.decode_latents
    with monkeypatch.context() as m:  # decoded frames brought back to the host every chunk
        m.setattr(model_module, "decode_latents", lambda vae, z: decode(vae, z).cpu())
        wm, policy, reward = tiny_world_model(), _policy(), _reward()
        problems = _check_on_device(*_run_on_simulated_gpu(wm, policy, reward, start)[:2], wm, policy, reward)
    assert any("violation: cat" in p for p in problems), problems
    assert any("frame-sized copies" in p for p in problems), problems

    with monkeypatch.context() as m:  # a tensor created without a device in the sampler's loop
        m.setattr(WorldModel, "residual_base", lambda self, context: torch.zeros(context[:, -1:].shape))
        wm, policy, reward = tiny_world_model(), _policy(), _reward()
        problems = _check_on_device(*_run_on_simulated_gpu(wm, policy, reward, start)[:2], wm, policy, reward)
    assert any("violation: add" in p for p in problems), problems

    with monkeypatch.context() as m:  # the policy resizing on the host (frames copied out every chunk)
        prepare = VLAPolicy.prepare_batch
        m.setattr(VLAPolicy, "prepare_batch", lambda self, images, *a: prepare(
            self, [{k: v.cpu().numpy() for k, v in cams.items()} for cams in images], *a))
        wm, policy, reward = tiny_world_model(), _policy(), _reward()
        problems = _check_on_device(*_run_on_simulated_gpu(wm, policy, reward, start)[:2], wm, policy, reward)
    assert any("frame-sized copies" in p for p in problems) and any("resized 0 frames" in p for p in problems)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_imagination_and_reward_scoring_on_a_real_gpu():
    wm, policy, reward = tiny_world_model(predict_residual=True), _policy(), _reward()
    start = moving_square_episodes(1, 12, seed=0, image_size=SIZE)[0].frames[None, :1]
    expected, expected_scores = _imagine_and_score(wm, policy, reward, start)
    wm.to("cuda")
    policy.to("cuda")
    reward.classifier.to("cuda")
    with ModuleInputs(lambda t: t.device.type == "cuda") as seen:
        result, scores = _imagine_and_score(wm, policy, reward, start)
    assert seen.off_device == [] and result.tokens.device.type == "cuda"
    assert result.frames.shape == expected.frames.shape
    # GPU kernels round differently: same shapes, close reward scores
    np.testing.assert_allclose(scores, expected_scores, atol=0.05)


# ------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real bags, a saved tiny world model, reward model and policy."""
    root = tmp_path_factory.mktemp("device")
    for s in range(4):
        write_episode_bag(root / "episodes", moving_square_episode(12, s, SIZE, success=s % 2 == 0))
    tiny_world_model(predict_residual=True).save_pretrained(root / "wm")
    _reward().save_pretrained(root / "reward")
    _policy().save_pretrained(root / "policy")
    return root


# Each command with inputs that do not exist: the device is checked before anything is read.
COMMANDS = {
    "train-vae": ["--episodes", "{x}/none", "--out", "{x}/out"],
    "train-world-model": ["--episodes", "{x}/none", "--out", "{x}/out"],
    "eval-world-model": ["--model", "{x}/none", "--episodes", "{x}/none"],
    "imagine": ["--model", "{x}/none", "--episode", "{x}/none", "--out", "{x}/out/v.mp4"],
    "train-reward": ["--episodes", "{x}/none", "--out", "{x}/out"],
    "eval-reward": ["--model", "{x}/none", "--episodes", "{x}/none"],
    "calibrate-reward": ["--model", "{x}/none", "--world-model", "{x}/none", "--episodes", "{x}/none",
                         "--out", "{x}/out"],
    "diagnose-imagination": ["--world-model", "{x}/none", "--reward", "{x}/none", "--episodes", "{x}/none",
                             "--json", "{x}/out/l.json"],
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_gpu_stops_each_command(command, tmp_path, capsys):
    args = [a.format(x=tmp_path) for a in COMMANDS[command]]
    for device in ("cuda", "cuda:1"):
        assert wmpo([command, *args, "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"device '{device}': this machine has 0 CUDA device(s)" in err[0], err
    assert wmpo([command, *args, "--device", "tpu"]) == 2
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_commands_load_their_models_onto_the_device(runs, tmp_path, capsys, monkeypatch):
    """imagine, eval-world-model, eval-reward, calibrate-reward and diagnose-imagination with --device cuda
    on the simulated GPU: every module they run sees only device tensors and nothing mixes devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    r, eps = str(runs), str(runs / "episodes")
    calls = [
        ["imagine", "--model", f"{r}/wm", "--policy", f"{r}/policy", "--episode", f"{eps}/square-0001",
         "--out", str(tmp_path / "v.mp4"), "--horizon", str(HORIZON)],
        ["eval-world-model", "--model", f"{r}/wm", "--episodes", eps, "--chunks", "1", "--json"],
        ["eval-reward", "--model", f"{r}/reward", "--episodes", eps, "--world-model", f"{r}/wm", "--json"],
        ["calibrate-reward", "--model", f"{r}/reward", "--world-model", f"{r}/wm", "--episodes", eps,
         "--out", str(tmp_path / "calibrated"), "--json"],
        ["diagnose-imagination", "--world-model", f"{r}/wm", "--reward", f"{r}/reward", "--episodes", eps,
         "--rungs", "b_vae", "c_chunk", "--resamples", "100"],
    ]
    for call in calls:
        sim = SimulatedGPU()
        with sim, ModuleInputs(sim.on_gpu) as seen:
            code = wmpo([*call, "--device", "cuda"])
        out = capsys.readouterr()
        assert code == 0, (call[0], out.err[-2000:])
        assert sim.violations == [], (call[0], sim.violations[:5])
        assert seen.off_device == [], (call[0], seen.off_device[:5])
        expected = {"VideoDiffusionTransformer"} | ({"LlamaModel"} if call[0] == "imagine" else set()) | (
            {"VideoMAEForVideoClassification"} if "reward" in call[0] or call[0].startswith("diagnose") else set())
        assert expected <= seen.called, (call[0], seen.called)
    assert json.loads((tmp_path / "calibrated" / "calibration.json").read_text())["episodes"] == 4
