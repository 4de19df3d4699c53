"""The embedded VLA: decoding modes, log-prob consistency (first GRPO ratio = 1), masking, persistence."""

import numpy as np
import pytest
import torch

from wmpo_core.data.normalization import NormStats, Stats, action_mask
from wmpo_core.policy.configuration_vla import ConfigError, VLAConfig
from wmpo_core.policy.modeling_vla import PolicyLoadError, VLAPolicy


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One torch thread while these tests run: on a CPU shared with other jobs, extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


INSTRUCTIONS = ["lift the cube", "stack the red cube on the green cube, then let go of it", "go"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return VLAPolicy(VLAConfig(num_layers=2)).eval()


@pytest.fixture(scope="module")
def batch(policy):
    rng = np.random.default_rng(0)
    images = [{"agentview": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)} for _ in INSTRUCTIONS]
    return policy.prepare_batch(images, INSTRUCTIONS)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
@pytest.mark.parametrize("temperature", [0.0, 1.6])
def test_sampled_log_prob_equals_training_log_prob(policy, batch, decoding, temperature):
    gen = torch.Generator().manual_seed(7)
    tokens, logp_sampled = policy.sample(batch, temperature, gen, decoding=decoding)
    assert tokens.shape == (3, 56) and logp_sampled.shape == (3, 56)
    assert (tokens >= policy.config.text_vocab_size).all() and (tokens < policy.config.vocab_size).all()
    logp_train = policy.log_prob(batch, tokens, temperature, decoding=decoding)
    ratio = torch.exp(logp_train - logp_sampled)
    assert torch.allclose(logp_train, logp_sampled, atol=1e-5, rtol=0), (logp_train - logp_sampled).abs().max()
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    if temperature > 0:
        assert len(set(tokens[0].tolist())) > 5, "sampling at T=1.6 from a random model should spread over bins"
    else:
        # greedy picks the most likely bin, so its log-prob is the row maximum
        logits = policy.action_logits(batch, tokens, decoding)
        assert torch.equal(logits.argmax(-1) + policy.config.text_vocab_size, tokens)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_prompt_padding_does_not_change_a_row(policy, batch, decoding):
    tokens, _ = policy.sample(batch, 1.0, torch.Generator().manual_seed(3), decoding=decoding)
    full = policy.log_prob(batch, tokens, decoding=decoding)
    for i in range(3):
        alone = policy.log_prob(batch.index(slice(i, i + 1)), tokens[i : i + 1], decoding=decoding)
        if i != 1:  # row 1 is the longest prompt: the others were padded in the batch
            assert torch.allclose(alone, full[i : i + 1], atol=1e-5)


def test_attention_structure(policy, batch):
    tokens, _ = policy.sample(batch, 1.0, torch.Generator().manual_seed(5), decoding="autoregressive")
    changed = tokens.clone()
    changed[:, 30] = policy.config.vocab_size - 1 - (changed[:, 30] - policy.config.text_vocab_size)
    a = policy.action_logits(batch, tokens, decoding="autoregressive")
    b = policy.action_logits(batch, changed, decoding="autoregressive")
    assert torch.equal(a[:, :31], b[:, :31]), "autoregressive: token 30 must not influence distributions <= 30"
    assert not torch.allclose(a[:, 31:], b[:, 31:]), "autoregressive: token 30 must influence later tokens"
    # parallel: every action slot sees every other slot
    with torch.no_grad():
        base = policy.action_logits(batch, decoding="parallel")
        saved = policy.action_slots.weight[55].clone()
        policy.action_slots.weight[55] += 1.0
        moved = policy.action_logits(batch, decoding="parallel")
        policy.action_slots.weight[55] = saved
    assert not torch.allclose(base[:, 0], moved[:, 0]), "parallel: slot 0 must attend to slot 55"


def test_images_and_instruction_condition_the_output(policy, batch):
    logits = policy.action_logits(batch, decoding="parallel")
    other = policy.prepare_batch([{"agentview": np.zeros((64, 64, 3), np.uint8)}] * 3, INSTRUCTIONS)
    assert not torch.allclose(logits, policy.action_logits(other, decoding="parallel"))
    swapped = policy.prepare_batch(
        [{"agentview": (batch.pixel_values[0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)}],
        ["open the drawer"],
    )
    assert not torch.allclose(logits[:1], policy.action_logits(swapped, decoding="parallel"), atol=1e-4)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_bc_loss_backward_and_mask(policy, batch, decoding):
    policy.train()
    try:
        tokens = torch.randint(policy.config.text_vocab_size, policy.config.vocab_size, (3, 56))
        mask = torch.ones(3, 56)
        mask[:, 28:] = 0
        out = policy(batch, tokens, mask, decoding=decoding)
        assert out["loss"].item() == pytest.approx(np.log(256), rel=0.1)  # random init ~ uniform over bins
        out["loss"].backward()
        grads = [p.grad for p in policy.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert policy.vision.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
        # masked tokens contribute nothing
        tokens2 = tokens.clone()
        tokens2[:, 40:] = policy.config.text_vocab_size
        if decoding == "parallel":
            assert policy(batch, tokens2, mask, decoding=decoding)["loss"].item() == pytest.approx(out["loss"].item())
    finally:
        policy.zero_grad(set_to_none=True)
        policy.eval()


def test_predict_chunk_physical_units_and_select_action(tmp_path):
    torch.manual_seed(1)
    stats = Stats(mean=np.zeros(7), std=np.ones(7), max=np.ones(7), min=-np.ones(7),
                  q01=np.array([-0.05] * 3 + [-0.5] * 3 + [-1]), q99=np.array([0.05] * 3 + [0.5] * 3 + [1]),
                  mask=action_mask(7))
    policy = VLAPolicy(VLAConfig(num_layers=1), norm_stats=NormStats({"default": {"action": stats}})).eval()
    image = {"agentview": np.full((96, 96, 3), 128, np.uint8)}  # resized to 64 inside
    chunk = policy.predict_chunk(image, "lift the cube")
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32
    assert np.abs(chunk[:, :3]).max() <= 0.05 and np.abs(chunk[:, 3:6]).max() <= 0.5
    tokens, _ = policy.sample(policy.prepare_batch([image], ["lift the cube"]), 0.0)
    normalized = policy.action_tokenizer.decode(tokens).reshape(8, 7)
    np.testing.assert_allclose(chunk[:, :3], normalized[:, :3] * 0.05, atol=1e-6)
    np.testing.assert_allclose(chunk[:, 6], normalized[:, 6], atol=1e-6)
    policy.reset()
    steps = [policy.select_action(image, "lift the cube") for _ in range(9)]
    np.testing.assert_allclose(np.stack(steps[:8]), chunk)
    with pytest.raises(ValueError, match="lacks camera"):
        policy.predict_chunk({"wrist": image["agentview"]}, "lift")
    with pytest.raises(ValueError, match="expected H x W x 3 uint8"):
        policy.predict_chunk({"agentview": image["agentview"] / 255.0}, "lift")
    with pytest.raises(ValueError, match="expected H x W x 3 uint8"):
        policy.predict_chunk({"agentview": image["agentview"][..., 0]}, "lift")


def test_config_validation_and_shape_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="decoding"):
        VLAConfig(decoding="beam")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['hiden_size'\]"):
        VLAConfig.from_dict({"hiden_size": 3})
    policy = VLAPolicy(VLAConfig(num_layers=1, proprio_dim=9))
    image = {"agentview": np.zeros((64, 64, 3), np.uint8)}
    assert policy.predict_chunk(image, "lift", np.zeros(9)).shape == (8, 7)
    with pytest.raises(ValueError, match="proprio contains NaN"):
        policy.predict_chunk(image, "lift", np.full(9, np.nan))
    with pytest.raises(ValueError, match="proprio has 3 dims, policy expects 9"):
        policy.predict_chunk(image, "lift", np.zeros(3))
    policy.save_pretrained(tmp_path)
    again = VLAPolicy.from_pretrained(tmp_path)
    for (k, a), b in zip(policy.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    cfg = VLAConfig.load(tmp_path / "config.json")
    cfg.hidden_size = 64
    cfg.save(tmp_path / "config.json")
    with pytest.raises(PolicyLoadError, match="model.safetensors: tensor .* has shape"):
        VLAPolicy.from_pretrained(tmp_path)
