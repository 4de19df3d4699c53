"""World model: action injection, noisy-frame conditioning, batched imagination, resumable training.

Everything runs the real pieces at a tiny size: diffusers AutoencoderKL, the video
transformer, DDPM/DDIM schedulers, AdamW, safetensors checkpoints, the VLA policy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.world_model.evaluate import evaluate_fidelity, psnr, ssim
from wmpo_core.world_model.imagine import ReplayPolicy, VLAImaginationPolicy, imagine, imagine_group
from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
from wmpo_core.world_model.synthetic import moving_square_episodes
from wmpo_core.world_model.train import LatentWindows, WorldModelTrainConfig, train_vae, train_world_model
from wmpo_core.world_model.transformer import VideoDiffusionTransformer
from wmpo_core.world_model.vae import TinyVAEConfig, load_vae, make_tiny_vae

SIZE = 32
C, K = 2, 4
TINY_VAE = TinyVAEConfig(image_size=SIZE, block_out_channels=(8, 8, 16), latent_channels=4)
TINY_TRANSFORMER = dict(latent_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2, mlp_ratio=2.0,
                        context_frames=C, chunk_size=K)


def tiny_world_model(context_noise_step: int = 50, seed: int = 0, prediction_type: str = "epsilon",
                     predict_residual: bool = False) -> WorldModel:
    torch.manual_seed(seed)
    vae = make_tiny_vae(TINY_VAE).eval()
    vae.requires_grad_(False)
    noise, sampler = make_schedulers(prediction_type=prediction_type)
    settings = WorldModelSettings(image_size=SIZE, context_noise_step=context_noise_step, num_inference_steps=4,
                                  predict_residual=predict_residual)
    return WorldModel(vae, VideoDiffusionTransformer(**TINY_TRANSFORMER), noise, sampler, settings)


@pytest.fixture(scope="module")
def episodes():
    return moving_square_episodes(4, 24, seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def trained(episodes) -> WorldModel:
    """A tiny world model after 15 AdamW steps: its action pathway is no longer the adaLN-Zero identity."""
    wm = tiny_world_model()
    windows = LatentWindows(wm, episodes)
    opt = torch.optim.AdamW(wm.transformer.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        lat, act = windows.batch(torch.randint(0, len(windows), (4,), generator=g))
        loss = wm.training_loss(lat, act, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    wm.transformer.eval()
    return wm


def _gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_actions_change_the_prediction(trained, episodes):
    ep = episodes[0]
    context = trained.encode(torch.from_numpy(ep.frames[None, :C]))
    actions = torch.from_numpy(ep.actions[None, C - 1 : C - 1 + K])
    same = trained.predict_chunk(context, actions, _gens(1))
    again = trained.predict_chunk(context, actions, _gens(1))
    other = trained.predict_chunk(context, -actions, _gens(1))
    assert torch.equal(same, again), "same seed and inputs must give the same prediction"
    diff = (other - same).abs().mean() / same.abs().mean()
    assert diff > 1e-3, f"reversing the actions changed the predicted latents by only {diff:.2e} (relative)"


def test_later_actions_leave_earlier_chunks_unchanged(trained, episodes):
    ep = episodes[1]
    start = ep.frames[None, :C]
    actions = ep.actions[None, C - 1 : C - 1 + 2 * K].copy()
    changed = actions.copy()
    changed[:, K:, :2] *= -1  # only the second chunk's actions differ
    a = imagine(trained, ReplayPolicy(actions, K), start, "", 2 * K, seeds=[3])
    b = imagine(trained, ReplayPolicy(changed, K), start, "", 2 * K, seeds=[3])
    first_a, first_b = a.imagined_frames[:, :K], b.imagined_frames[:, :K]
    assert np.array_equal(first_a, first_b), "chunk 1 depends on chunk 2's actions"
    second_diff = np.abs(a.imagined_frames[:, K:].astype(int) - b.imagined_frames[:, K:].astype(int)).sum()
    assert second_diff > 0, "chunk 2 ignores its own actions"
    assert a.frames.shape == (1, C + 2 * K, SIZE, SIZE, 3)


class _ContextSpy:
    """Forward pre-hook that records the context latents the transformer receives."""

    def __init__(self, transformer: VideoDiffusionTransformer):
        self.seen: list[torch.Tensor] = []
        self.handle = transformer.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.seen.append(args[0][:, :C].detach().clone())
        self.seen_timesteps = args[1].detach().clone()


def _noise_std(wm: WorldModel, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """Measured and expected std of x_t - sqrt(abar_t) x_0 at the context noise step."""
    abar = wm.noise_scheduler.alphas_cumprod[wm.settings.context_noise_step]
    residual = noisy - abar.sqrt() * clean
    return float(residual.std()), float((1 - abar).sqrt())


def test_noisy_frame_conditioning_in_training(episodes):
    wm = tiny_world_model()
    windows = LatentWindows(wm, episodes)
    latents, actions = windows.batch(torch.arange(8))
    spy = _ContextSpy(wm.transformer)
    wm.training_loss(latents, actions, torch.Generator().manual_seed(1))
    fed = spy.seen[-1]
    measured, expected = _noise_std(wm, fed, latents[:, :C])
    assert not torch.allclose(fed, latents[:, :C])
    assert abs(measured - expected) / expected < 0.1, f"context noise std {measured:.4f}, expected {expected:.4f}"
    assert (spy.seen_timesteps[:, :C] == 50).all()
    # Ablation: step 0 feeds the clean context.
    clean = tiny_world_model(context_noise_step=0)
    spy0 = _ContextSpy(clean.transformer)
    clean.training_loss(latents, actions, torch.Generator().manual_seed(1))
    assert torch.equal(spy0.seen[-1], latents[:, :C])


def test_noisy_frame_conditioning_in_imagination(episodes):
    wm = tiny_world_model()
    starts = np.stack([ep.frames[:C] for ep in episodes])
    clean = wm.encode(torch.from_numpy(starts))
    spy = _ContextSpy(wm.transformer)
    actions = np.stack([ep.actions[:K] for ep in episodes])
    imagine(wm, ReplayPolicy(actions, K), starts, "", K, seeds=range(len(starts)))
    assert len(spy.seen) == wm.settings.num_inference_steps
    for fed in spy.seen:  # the same noisy context at every denoising step of the chunk
        assert torch.equal(fed, spy.seen[0])
    measured, expected = _noise_std(wm, spy.seen[0], clean)
    assert abs(measured - expected) / expected < 0.1, f"context noise std {measured:.4f}, expected {expected:.4f}"


def _tiny_policy():
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy

    torch.manual_seed(0)
    cfg = VLAConfig(image_size=SIZE, patch_size=8, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                    vision_intermediate_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                    intermediate_size=64, chunk_size=K, max_text_tokens=24)
    return VLAPolicy(cfg).eval()


def test_group_equals_singles(trained, episodes):
    policy = VLAImaginationPolicy(_tiny_policy(), camera="agentview", temperature=1.6)
    start = episodes[2].frames[None, :1]  # one real frame, padded to c
    group = imagine_group(trained, policy, start, "lift the cube", horizon=2 * K, group_size=4, seed=10)
    assert group.frames.shape == (4, C + 2 * K, SIZE, SIZE, 3)
    assert group.tokens.shape == (4, 2, K * 7) and group.log_probs.shape == (4, 2, K * 7)
    assert len({tuple(t.flatten().tolist()) for t in group.tokens}) > 1, "group members sampled identical chunks"
    for i in range(4):
        single = imagine(trained, policy, start, "lift the cube", 2 * K, seeds=[10 + i])
        assert torch.equal(single.tokens[0], group.tokens[i]), f"member {i}: tokens differ from its single run"
        torch.testing.assert_close(single.log_probs[0], group.log_probs[i], atol=1e-4, rtol=0)
        np.testing.assert_allclose(single.actions[0], group.actions[i], atol=1e-6)
        worst = np.abs(single.frames[0].astype(int) - group.frames[i].astype(int)).max()
        assert worst <= 2, f"member {i}: frames differ by {worst} grey levels from its single run"


def test_interrupted_training_resumes_identically(tmp_path, episodes):
    vae_dir = tmp_path / "vae"
    stats = train_vae(episodes, vae_dir, steps=3, batch_size=4, image_size=SIZE, tiny=TINY_VAE, progress=False)
    assert stats["scaling_factor"] > 0 and load_vae(vae_dir).config.scaling_factor == pytest.approx(stats["scaling_factor"])
    cfg = WorldModelTrainConfig(steps=6, batch_size=2, lr=1e-3, checkpoint_every=3, image_size=SIZE,
                                num_inference_steps=2, transformer=TINY_TRANSFORMER)
    full = train_world_model(episodes, tmp_path / "full", cfg, vae_path=vae_dir, progress=False)
    part1 = train_world_model(episodes, tmp_path / "cut", cfg, vae_path=vae_dir, stop_after=3, progress=False)
    assert not part1["finished"] and (tmp_path / "cut" / "checkpoints" / "step-000003").is_dir()
    assert not (tmp_path / "cut" / "world_model.json").exists()
    part2 = train_world_model(episodes, tmp_path / "cut", cfg, vae_path=vae_dir, progress=False)
    assert part2["finished"] and len(part2["losses"]) == 3
    assert part1["losses"] + part2["losses"] == full["losses"], "resumed loss curve differs from the uninterrupted one"
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["losses"] == full["losses"]
    a = WorldModel.from_pretrained(tmp_path / "full")
    b = WorldModel.from_pretrained(tmp_path / "cut")
    for (name, pa), pb in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"final weights differ at {name}"
    # Alignment: continue from the pretrained run on other episodes with a fresh optimizer.
    others = moving_square_episodes(2, 20, seed=50, image_size=SIZE)
    aligned = train_world_model(others, tmp_path / "aligned", WorldModelTrainConfig(**{**cfg.__dict__, "steps": 2}),
                                init=tmp_path / "full", progress=False)
    assert aligned["finished"]
    assert json.loads((tmp_path / "aligned" / "episodes.json").read_text())["init"] == str(tmp_path / "full")


def test_actions_reach_the_prediction_through_the_frame_tokens():
    """With the AdaLN action path silenced, ``action_in_tokens`` alone still carries the actions (and their sums)."""
    torch.manual_seed(0)
    tf = VideoDiffusionTransformer(**TINY_TRANSFORMER, action_in_tokens=True, cumulative_actions=True).eval()
    for module in [*(b.modulation[1] for b in tf.blocks), tf.final_modulation[1], tf.final_proj]:
        torch.nn.init.normal_(module.weight, std=0.05)  # leave the adaLN-Zero identity start
    torch.nn.init.zeros_(tf.action_embed[2].weight)
    torch.nn.init.zeros_(tf.action_embed[2].bias)
    assert tf.action_embed[0].in_features == 14  # each action step plus the chunk's running sum
    latents, t = torch.randn(2, C + K, 4, 8, 8), torch.full((2, C + K), 500)
    actions = torch.rand(2, K, 7, generator=torch.Generator().manual_seed(1)) * 0.1 - 0.05
    other = actions.clone()
    other[:, 0, 0] += 0.04  # one step's ee_dx: through the running sum it reaches every later frame's own input
    with torch.no_grad():
        a, b = tf(latents, t, actions), tf(latents, t, other)
    assert torch.equal(tf.action_embed(torch.randn(3, 14)), torch.zeros(3, tf.config.hidden_size))
    assert (a[:, C:] - b[:, C:]).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-4, "some predicted frame ignored the action"


def test_residual_x0_prediction_repeats_an_unchanged_scene(tmp_path, episodes):
    """Residual mode diffuses the change from the last context frame, so an unchanged scene needs no output."""
    residual = tiny_world_model(prediction_type="sample", predict_residual=True)
    plain = tiny_world_model(prediction_type="sample")
    frame = residual.encode(torch.from_numpy(episodes[0].frames[None, :1]))
    static = frame.repeat(2, C + K, 1, 1, 1)
    actions = torch.zeros(2, K, 7)
    # A fresh transformer outputs zero (adaLN-Zero): exactly the x0 target of an unchanged scene in residual mode.
    assert residual.training_loss(static, actions, torch.Generator().manual_seed(0)).item() == 0.0
    assert plain.training_loss(static, actions, torch.Generator().manual_seed(0)).item() > 0.0
    truth = static[:, C:]
    err_residual = (residual.predict_chunk(static[:, :C], actions, _gens(2)) - truth).abs().mean()
    err_plain = (plain.predict_chunk(static[:, :C], actions, _gens(2)) - truth).abs().mean()
    assert err_residual < 0.2 * err_plain, f"residual error {err_residual:.4f} vs plain {err_plain:.4f}"
    # What the transformer predicts travels with the saved model.
    residual.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert back.settings.predict_residual
    assert back.noise_scheduler.config.prediction_type == back.sampler.config.prediction_type == "sample"
    with pytest.raises(ValueError, match="prediction_type"):
        make_schedulers(prediction_type="x0")


def test_metrics_and_fidelity_report(trained, episodes):
    frame = episodes[0].frames[:1]
    assert psnr(frame, frame)[0] == 100.0 and ssim(frame, frame)[0] == pytest.approx(1.0)
    noisy = np.clip(frame.astype(int) + np.random.default_rng(0).normal(0, 10, frame.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr(noisy, frame)[0] < 30  # sigma 10 noise: about 28 dB
    assert ssim(noisy, frame)[0] < 0.9
    report = evaluate_fidelity({"tiny": trained}, moving_square_episodes(3, 2 * C + 2 * K, seed=90, image_size=SIZE),
                               chunks=2)
    assert set(report.per_chunk) == {"model", "repeat_last", "shuffled_actions"}
    assert len(report.per_frame["model"]["psnr"]) == 2 * K and len(report.per_chunk["model"]["ssim"]) == 2
    assert "LPIPS" in report.table()


def test_an_oft_policy_imagines_with_its_own_decoding(trained, episodes):
    """An OpenVLA-OFT policy samples imagined chunks with OFT decoding, so GRPO's update (PolicyLogProbs,
    the policy's own decoding) recomputes exactly the rollout's log-probs: the ratio starts at 1."""
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.rl.trainer_imagination import PolicyLogProbs

    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(image_size=SIZE, patch_size=8, vision_hidden_size=32, vision_layers=1,
                                 vision_heads=2, vision_intermediate_size=64, hidden_size=32, num_layers=1,
                                 num_heads=2, num_kv_heads=2, intermediate_size=64, chunk_size=K, max_text_tokens=24,
                                 decoding="oft")).eval()
    group = imagine_group(trained, VLAImaginationPolicy(policy, "agentview", 1.6), episodes[1].frames[None, :1],
                          "lift the cube", 2 * K, group_size=2, seed=3)
    for j in range(2):  # the frame the policy saw before chunk j
        seen = group.frames[:, C - 1 + j * K]
        batch = policy.prepare_batch([{"agentview": f} for f in seen], ["lift the cube"] * 2)
        with torch.no_grad():
            recomputed, _ = PolicyLogProbs(policy)(batch, group.tokens[:, j], 1.6)
        torch.testing.assert_close(recomputed, group.log_probs[:, j], atol=1e-5, rtol=0)


def test_region_weighted_loss_is_the_weighted_mean_of_per_position_errors(episodes):
    """``loss_region`` (beyond the paper): positions inside the box weigh ``loss_region_weight`` times as much.
    Checked exactly: with one-hot weights the loss is one position's error; a region weighting is the
    weighted mean of those errors; equal weights give the plain MSE."""
    from wmpo_core.world_model.train import loss_weights

    wm = tiny_world_model()
    latents, actions = LatentWindows(wm, episodes).batch(torch.arange(4))

    def loss(weights=None):
        return wm.training_loss(latents, actions, torch.Generator().manual_seed(3), weights=weights).item()

    side = TINY_TRANSFORMER["latent_size"]
    assert loss(torch.ones(side, side)) == pytest.approx(loss(), rel=1e-6)
    config = WorldModelTrainConfig(loss_region=[0.25, 0.5, 0.75, 1.0], loss_region_weight=5.0)
    weights = loss_weights(config, side)
    inside = torch.zeros(side, side, dtype=torch.bool)
    inside[4:8, 2:6] = True  # rows: centres in [0.5, 1); columns: centres in [0.25, 0.75)
    assert torch.equal(weights, torch.where(inside, 5.0, 1.0))
    errors = torch.zeros(side, side)
    for i in range(side):
        for j in range(side):
            one_hot = torch.zeros(side, side)
            one_hot[i, j] = 1.0
            errors[i, j] = loss(one_hot)
    assert loss() == pytest.approx(errors.mean().item(), rel=1e-5)
    assert loss(weights) == pytest.approx(((errors * weights).sum() / weights.sum()).item(), rel=1e-5)
    assert loss_weights(WorldModelTrainConfig(), side) is None


@pytest.mark.parametrize("bad", [{"loss_region": [0.5, 0.0, 0.2, 1.0]}, {"loss_region": [0, 0, 1]},
                                 {"loss_region": [0, 0, 1, 1.5]}, {"loss_region_weight": 0.5},
                                 {"loss_region_weight": "x"}])
def test_a_bad_loss_region_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WorldModelTrainConfig(**bad)


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path):
    """A run checkpointed before ``loss_region`` existed resumes under the new code (the field had its
    default then); a changed value is still refused, naming the field."""
    from dataclasses import asdict

    from wmpo_core.world_model.train import _check_resumable

    old = {k: v for k, v in asdict(WorldModelTrainConfig()).items() if not k.startswith("loss_region")}
    (tmp_path / "state.json").write_text(json.dumps({"step": 10, "config": old}))
    _check_resumable(tmp_path, WorldModelTrainConfig(steps=99))
    with pytest.raises(ValueError, match="loss_region_weight"):
        _check_resumable(tmp_path, WorldModelTrainConfig(loss_region=[0, 0, 1, 1], loss_region_weight=2.0))


def test_rollout_context_is_the_models_own_prediction_of_the_preceding_chunk(trained, episodes):
    """``rollout_fraction`` (beyond the paper): a window's context becomes the last c frames of the chunk the
    model predicts from the real frames one chunk earlier, with the actions that lead there; targets stay real."""
    from wmpo_core.world_model.train import imagined_context

    windows = LatentWindows(trained, episodes)
    assert len(windows.rollout_windows) and all(windows.index[j][1] >= K for j in windows.rollout_windows.tolist())
    assert len(windows.rollout_windows) < len(windows)  # the first windows of an episode have no chunk before them
    idx = windows.rollout_windows[torch.tensor([0, 5, len(windows.rollout_windows) - 1])]
    lat, act = windows.batch(idx)
    out = imagined_context(trained, windows, lat, idx, torch.Generator().manual_seed(7))
    seeds = torch.randint(0, 2**62, (len(idx),), generator=torch.Generator().manual_seed(7)).tolist()
    for i, j in enumerate(idx.tolist()):
        ep, s = windows.index[j]
        # The real frames the imagined ones stand for: window frames s..s+c-1.
        assert torch.equal(lat[i, :C], windows.latents[ep][s : s + C])
        start = windows.latents[ep][s - K : s - K + C]  # frames s-K..s-K+c-1; predicted frames s-K+c..s+c-1
        actions = windows.actions[ep][s - K + C - 1 : s + C - 1]  # predicted frame f follows action f-1
        alone = trained.predict_chunk(start[None], actions[None], [torch.Generator().manual_seed(int(seeds[i]))])
        torch.testing.assert_close(out[i, :C], alone[0, K - C :], rtol=1e-4, atol=1e-5)
    assert torch.equal(out[:, C:], lat[:, C:])
    assert not torch.allclose(out[:, :C], lat[:, :C], atol=1e-3), "the context was not replaced"


def test_training_with_imagined_context_resumes_identically(tmp_path, episodes):
    vae_dir = tmp_path / "vae"
    train_vae(episodes, vae_dir, steps=2, batch_size=4, image_size=SIZE, tiny=TINY_VAE, progress=False)
    cfg = WorldModelTrainConfig(steps=4, batch_size=4, checkpoint_every=2, image_size=SIZE, num_inference_steps=2,
                                transformer=TINY_TRANSFORMER, rollout_fraction=0.5)
    full = train_world_model(episodes, tmp_path / "full", cfg, vae_path=vae_dir, progress=False)
    train_world_model(episodes, tmp_path / "cut", cfg, vae_path=vae_dir, stop_after=2, progress=False)
    rest = train_world_model(episodes, tmp_path / "cut", cfg, vae_path=vae_dir, progress=False)
    assert full["losses"][2:] == rest["losses"]
    clean = train_world_model(episodes, tmp_path / "clean", WorldModelTrainConfig(**{**cfg.__dict__, "rollout_fraction": 0}),
                              vae_path=vae_dir, progress=False)
    assert clean["losses"][0] != full["losses"][0], "imagined context did not change the first batch's loss"


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_a_bad_rollout_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="rollout_fraction"):
        WorldModelTrainConfig(rollout_fraction=bad)


def test_a_checkpoint_write_that_fails_half_way_leaves_nothing_behind(tmp_path):
    """The weights are on disk when the state file fails to serialize (as when Ctrl-C lands mid-write): the temp
    folder goes, no step folder appears, and the earlier checkpoint stays the newest."""
    from wmpo_core.world_model.checkpoint import latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    first = save_checkpoint(tmp_path, model=model, optimizer=opt, generators={}, state={"step": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, model=model, optimizer=opt, generators={}, state={"step": 2, "bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]
    assert latest_checkpoint(tmp_path) == first


# ------------------------------------------------------------------------ mixed precision, gradient checkpointing
class _TrainingWatch:
    """Global hooks on every module and optimizer while a trainer runs: the gradients and parameters each
    optimizer step saw, the dtypes of trainable Linear / Conv2d outputs, how often blocks were entered with
    gradients on (forward and backward recomputation), and each ``torch.utils.checkpoint.checkpoint`` call's
    ``use_reentrant``."""

    def __init__(self, block_types: tuple[type, ...]):
        import torch.utils.checkpoint as checkpoint_module
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.grads: list[list[torch.Tensor]] = []
        self.param_dtypes: set[torch.dtype] = set()
        self.state_dtypes: set[torch.dtype] = set()
        self.output_dtypes: dict[str, set[torch.dtype]] = {"Linear": set(), "Conv2d": set()}
        self.block_calls = 0
        self.reentrant: list[object] = []
        self._block_types = block_types
        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post),
                         register_optimizer_step_pre_hook(self._before_step),
                         register_optimizer_step_post_hook(self._after_step)]
        self._checkpoint_module, self._checkpoint = checkpoint_module, checkpoint_module.checkpoint

        def spy(function, *args, **kwargs):
            self.reentrant.append(kwargs.get("use_reentrant"))
            return self._checkpoint(function, *args, **kwargs)

        checkpoint_module.checkpoint = spy

    def _pre(self, module, args):
        # a pre-hook: a recomputation may stop early inside the block (checkpoint early stop), never at its entry
        if isinstance(module, self._block_types) and torch.is_grad_enabled():
            self.block_calls += 1

    def _post(self, module, args, output):
        kind = "Linear" if isinstance(module, torch.nn.Linear) else "Conv2d" if isinstance(module, torch.nn.Conv2d) else None
        if kind and module.weight.requires_grad and torch.is_grad_enabled():  # the module being trained
            self.output_dtypes[kind].add(output.dtype)

    def _before_step(self, optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.grads.append([p.grad.detach().clone() for p in params])
        self.param_dtypes |= {p.dtype for p in params} | {p.grad.dtype for p in params}

    def _after_step(self, optimizer, args, kwargs):
        self.state_dtypes |= {v.dtype for state in optimizer.state.values() for v in state.values()
                              if torch.is_tensor(v) and v.is_floating_point()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._checkpoint_module.checkpoint = self._checkpoint


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory, episodes):
    path = tmp_path_factory.mktemp("vae")
    train_vae(episodes, path, steps=2, batch_size=4, image_size=SIZE, tiny=TINY_VAE, progress=False)
    return path


def _train(tmp_path, episodes, vae_dir, **fields) -> tuple[dict, _TrainingWatch]:
    """Three world-model training steps (two blocks) with ``fields``, watched."""
    from wmpo_core.world_model.transformer import SpatioTemporalBlock

    cfg = WorldModelTrainConfig(steps=3, batch_size=2, checkpoint_every=3, image_size=SIZE, num_inference_steps=2,
                                transformer={**TINY_TRANSFORMER, "depth": 2}, **fields)
    watch = _TrainingWatch((SpatioTemporalBlock,))
    try:
        result = train_world_model(episodes, tmp_path, cfg, vae_path=vae_dir, progress=False)
    finally:
        watch.close()
    return result, watch


def test_gradient_checkpointing_recomputes_the_blocks_and_keeps_the_gradients(tmp_path, episodes, tiny_vae_dir):
    """``grad_checkpointing``: every block runs again in the backward pass (non-reentrant checkpoint), and the
    gradients AdamW steps with are those of the plain run, step for step (step 3: every weight has a gradient,
    past the adaLN-Zero start)."""
    plain, plain_watch = _train(tmp_path / "plain", episodes, tiny_vae_dir)
    ckpt, ckpt_watch = _train(tmp_path / "ckpt", episodes, tiny_vae_dir, grad_checkpointing=True)
    assert plain_watch.block_calls == 2 * 3 and not plain_watch.reentrant  # depth 2, 3 steps, nothing recomputed
    assert ckpt_watch.block_calls == 2 * 2 * 3, "the blocks were not recomputed in the backward pass"
    assert ckpt_watch.reentrant == [False] * (2 * 3)
    assert len(plain_watch.grads) == len(ckpt_watch.grads) == 3
    for step, (a, b) in enumerate(zip(plain_watch.grads, ckpt_watch.grads, strict=True)):
        for i, (ga, gb) in enumerate(zip(a, b, strict=True)):
            torch.testing.assert_close(gb, ga, atol=1e-6, rtol=0, msg=f"step {step + 1}, parameter {i}")
    assert sum(bool(g.abs().sum() > 0) for g in plain_watch.grads[-1]) > 0.9 * len(plain_watch.grads[-1])
    assert ckpt["losses"] == pytest.approx(plain["losses"], abs=1e-6)
    # A training-time switch: the saved model is the plain transformer, and evaluation never recomputes.
    assert "gradient_checkpointing" not in json.loads((tmp_path / "ckpt" / "transformer" / "config.json").read_text())


def test_bf16_mixed_precision_autocasts_the_transformer_and_keeps_fp32_state(tmp_path, episodes, tiny_vae_dir):
    """``mixed_precision = "bf16"``: the transformer's Linear layers compute in bfloat16, while its weights, their
    gradients, the AdamW moments, the EMA and the loss stay fp32; the weights move. "no" stays fp32 throughout."""
    from safetensors.torch import load_file

    from wmpo_core.world_model.train import build_world_model

    fp32, fp32_watch = _train(tmp_path / "fp32", episodes, tiny_vae_dir)
    bf16, bf16_watch = _train(tmp_path / "bf16", episodes, tiny_vae_dir, mixed_precision="bf16")
    assert fp32_watch.output_dtypes["Linear"] == {torch.float32}
    assert bf16_watch.output_dtypes["Linear"] == {torch.bfloat16}, "the transformer did not run under bf16 autocast"
    assert bf16_watch.param_dtypes == bf16_watch.state_dtypes == {torch.float32}
    assert all(np.isfinite(bf16["losses"]))
    assert bf16["losses"][0] == fp32["losses"][0]  # a fresh transformer outputs zero in any precision
    assert bf16["losses"][1:] != fp32["losses"][1:]  # later steps saw bf16 rounding
    assert bf16["losses"] == pytest.approx(fp32["losses"], rel=0.05)
    wm = tiny_world_model()
    latents, actions = LatentWindows(wm, episodes).batch(torch.arange(2))
    assert wm.training_loss(latents, actions, torch.Generator(), autocast_dtype=torch.bfloat16).dtype == torch.float32
    checkpoint = tmp_path / "bf16" / "checkpoints" / "step-000003"
    for name in ("model", "optimizer", "ema"):
        tensors = load_file(str(checkpoint / f"{name}.safetensors"))
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}, name
    init = build_world_model(WorldModelTrainConfig(image_size=SIZE, transformer={**TINY_TRANSFORMER, "depth": 2}),
                             vae_path=tiny_vae_dir)  # the same seeded initialisation the run started from
    trained = load_file(str(checkpoint / "model.safetensors"))
    moved = [n for n, w in init.transformer.state_dict().items() if not torch.equal(w, trained[n])]
    assert any(n.startswith("blocks.1.mlp") for n in moved), f"the blocks' weights did not move: {moved}"


def test_vae_training_in_bf16_with_checkpointing(tmp_path, episodes):
    """The tiny VAE trained before the world model: its convolutions compute in bfloat16 with fp32 weights, and
    with checkpointing its encoder and decoder blocks run again in the backward pass with the same gradients."""
    from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UpDecoderBlock2D
    from safetensors.torch import load_file

    def run(name: str, **options) -> _TrainingWatch:
        watch = _TrainingWatch((DownEncoderBlock2D, UpDecoderBlock2D))
        try:
            train_vae(episodes, tmp_path / name, steps=2, batch_size=2, image_size=SIZE, tiny=TINY_VAE,
                      progress=False, **options)
        finally:
            watch.close()
        return watch

    plain, ckpt = run("plain"), run("ckpt", grad_checkpointing=True)
    assert plain.block_calls == 2 * 6 and not plain.reentrant  # 2 steps, 3 encoder + 3 decoder blocks
    assert ckpt.block_calls == 2 * plain.block_calls and set(ckpt.reentrant) == {False}
    for a, b in zip(plain.grads, ckpt.grads, strict=True):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(gb, ga, atol=1e-6, rtol=0)
    assert plain.output_dtypes["Conv2d"] == {torch.float32}
    bf16 = run("bf16", mixed_precision="bf16")
    assert bf16.output_dtypes["Conv2d"] == {torch.bfloat16}, "the VAE did not train under bf16 autocast"
    assert bf16.param_dtypes == bf16.state_dtypes == {torch.float32}
    saved = load_file(str(tmp_path / "bf16" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert np.isfinite(json.loads((tmp_path / "bf16" / "vae_training.json").read_text())["final_loss"])


@pytest.mark.parametrize("bad", [{"mixed_precision": "fp16"}, {"mixed_precision": None}, {"mixed_precision": ["bf16"]},
                                 {"grad_checkpointing": "yes"}, {"grad_checkpointing": 1}])
def test_a_bad_precision_setting_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WorldModelTrainConfig(**bad)
