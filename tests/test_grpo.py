"""GRPO objective and dynamic sampling: hand-computed cases and a real update on a tiny policy."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from wmpo_core.rl.grpo import (
    ActionTokenPolicy,
    GRPOBatch,
    GRPOConfig,
    group_relative_advantages,
    grpo_loss,
    grpo_update,
    token_log_probs_and_entropy,
)
from wmpo_core.rl.sampling import dynamic_sampling, informative_group_mask


# ---------------------------------------------------------------- advantages
def test_group_relative_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_relative_advantages(rewards, eps=1e-6)
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert adv[0].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    s = math.sqrt(1.0 / 3.0)
    assert adv[1].tolist() == pytest.approx([0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s], rel=1e-5)
    # a group that all succeeded carries no signal
    assert adv[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="num_groups"):
        group_relative_advantages(torch.ones(4))


# ---------------------------------------------------------------- clipping
def test_clipping_both_sides_by_hand():
    ratios = torch.tensor([[1.5], [0.5], [1.5], [0.5]])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    logp_old = torch.zeros(4, 1)
    logp_new = ratios.log().requires_grad_(True)
    loss, stats = grpo_loss(logp_new, logp_old, advantages, clip_low=0.2, clip_high=0.28)
    # per token min(r A, clip(r, 0.8, 1.28) A): 1.28 (clipped high), -0.8 (clipped low), -1.5, 0.5
    assert loss.item() == pytest.approx(-(1.28 - 0.8 - 1.5 + 0.5) / 4, abs=1e-6)
    loss.backward()
    grad = logp_new.grad[:, 0].tolist()
    # ratio above 1.28 with A > 0 and below 0.8 with A < 0: no gradient at all
    assert grad[0] == 0.0 and grad[1] == 0.0
    # unclipped tokens: d(-r A / 4) / d logp = -r A / 4
    assert grad[2] == pytest.approx(1.5 / 4, abs=1e-6)
    assert grad[3] == pytest.approx(-0.5 / 4, abs=1e-6)
    assert stats["clip_frac_high"] == pytest.approx(0.25)
    assert stats["clip_frac_low"] == pytest.approx(0.25)
    assert stats["ratio_min"] == pytest.approx(0.5) and stats["ratio_max"] == pytest.approx(1.5)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    kl = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.5, 0.5)]
    assert stats["approx_kl"] == pytest.approx(sum(kl) / 4, rel=1e-5)
    assert stats["advantage_mean"] == pytest.approx(0.0)


def test_clip_is_asymmetric():
    # ratio 1.25 with A > 0 is inside [0.8, 1.28] (clip-higher) but would be clipped by a symmetric 0.2
    logp_new = torch.tensor([[math.log(1.25)]], requires_grad=True)
    loss, stats = grpo_loss(logp_new, torch.zeros(1, 1), torch.tensor([1.0]))
    loss.backward()
    assert loss.item() == pytest.approx(-1.25, abs=1e-6)
    assert logp_new.grad.item() == pytest.approx(-1.25, abs=1e-6)
    assert stats["clip_frac_high"] == 0.0
    loss_sym, stats_sym = grpo_loss(logp_new, torch.zeros(1, 1), torch.tensor([1.0]), clip_high=0.2)
    assert loss_sym.item() == pytest.approx(-1.2, abs=1e-6) and stats_sym["clip_frac_high"] == 1.0


# ---------------------------------------------------------------- token-level averaging
def test_token_level_average_and_mask():
    # trajectory 0 has 3 valid tokens (A = +1), trajectory 1 has 1 valid token (A = -1) and padding
    logp_old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 50.0, -50.0]])
    logp_new = logp_old.clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = grpo_loss(logp_new, logp_old, torch.tensor([1.0, -1.0]), mask)
    # token level: (3 * 1 + 1 * (-1)) / 4 valid tokens; a per-sequence mean would give 0
    assert loss.item() == pytest.approx(-0.5)
    assert stats["valid_tokens"] == 4.0
    loss.backward()
    assert logp_new.grad[1, 1:].tolist() == [0.0, 0.0]  # padding gets no gradient
    assert logp_new.grad[0].tolist() == pytest.approx([-0.25] * 3)
    assert float(logp_new.grad[1, 0]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp_new, logp_old, torch.tensor([1.0, -1.0]), mask[:, :2])


# ---------------------------------------------------------------- dynamic sampling
def test_informative_group_mask():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert informative_group_mask(rewards).tolist() == [False, False, True]


ROUNDS = [
    [("all-success", [1, 1, 1, 1]), ("mixed-a", [1, 0, 0, 0]), ("all-failure", [0, 0, 0, 0])],
    [("all-failure-2", [0, 0, 0, 0]), ("all-failure-3", [0, 0, 0, 0])],
    [("mixed-b", [0, 0, 1, 1]), ("mixed-c", [0, 1, 1, 1])],
    [("mixed-d", [1, 0, 1, 0])],
]


def test_dynamic_sampling_discards_uniform_groups():
    calls = []

    def sample(round_index):
        calls.append(round_index)
        return ROUNDS[round_index]

    result = dynamic_sampling(sample, lambda g: g[1], target_groups=2, max_rounds=10)
    assert calls == [0, 1, 2]  # stopped as soon as the target was met
    assert [g[0] for g in result.groups] == ["mixed-a", "mixed-b"]  # mixed-c cut to the target
    assert (result.rounds, result.sampled_groups, result.kept_groups) == (3, 7, 3)
    assert result.kept_fraction == pytest.approx(3 / 7)
    assert (result.all_success_groups, result.all_failure_groups) == (1, 3)
    assert not result.capped and result.stats()["kept_groups"] == 2.0


def test_dynamic_sampling_capped_logs_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wmpo_core.rl.sampling"):
        result = dynamic_sampling(lambda i: ROUNDS[i], lambda g: g[1], target_groups=5, max_rounds=2)
    assert result.capped and result.rounds == 2
    assert [g[0] for g in result.groups] == ["mixed-a"]
    assert any("capped: 1 of 5 informative groups after 2 rounds" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- a real update on a tiny policy
class TinyCategoricalPolicy(nn.Module):
    """Start-state id -> independent categorical over V action tokens at each of T positions."""

    def __init__(self, num_states: int = 2, tokens: int = 3, vocab: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.tokens, self.vocab = tokens, vocab
        self.embed = nn.Embedding(num_states, hidden)
        self.head = nn.Linear(hidden, tokens * vocab)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(states))).view(-1, self.tokens, self.vocab)

    def log_prob_and_entropy(self, states, action_tokens, temperature=1.0):
        return token_log_probs_and_entropy(self.logits(states), action_tokens, temperature)

    def log_prob(self, states, action_tokens, temperature=1.0):
        return self.log_prob_and_entropy(states, action_tokens, temperature)[0]


def test_grpo_update_moves_log_probs_by_advantage_sign():
    torch.manual_seed(0)
    policy = TinyCategoricalPolicy()
    assert isinstance(policy, ActionTokenPolicy)
    config = GRPOConfig(group_size=4, temperature=1.0, max_grad_norm=100.0)
    # 2 start states x G = 4 trajectories; trajectory i of a group repeats token i (no shared tokens)
    states = torch.tensor([0] * 4 + [1] * 4)
    tokens = torch.arange(4).repeat(2)[:, None].expand(-1, policy.tokens).contiguous()
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    advantages = group_relative_advantages(rewards, config.advantage_eps).flatten()
    with torch.no_grad():
        logp_old = policy.log_prob(states, tokens, config.temperature)
    batch = GRPOBatch(states, tokens, logp_old, advantages, torch.ones_like(logp_old))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    first = grpo_update(policy, optimizer, batch, config)
    assert first["ratio_mean"] == pytest.approx(1.0) and first["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert first["entropy_is_estimate"] == 0.0 and 0.0 < first["entropy"] <= math.log(policy.vocab) + 1e-5
    for _ in range(2):
        stats = grpo_update(policy, optimizer, batch, config)
    with torch.no_grad():
        change = (policy.log_prob(states, tokens) - logp_old).sum(-1)
    assert stats["approx_kl"] > 0.0 and stats["grad_norm"] > 0.0
    positive, negative = advantages > 0, advantages < 0
    assert bool((change[positive] > 0).all()), change
    assert bool((change[negative] < 0).all()), change


def test_grpo_update_on_the_vla_policy():
    """The same objective drives the embedded VLA: its log_prob fits ActionTokenPolicy."""
    np = pytest.importorskip("numpy")
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy

    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(num_layers=1, vision_layers=1))
    assert isinstance(policy, ActionTokenPolicy)
    config = GRPOConfig(group_size=4, temperature=1.6)
    image = {"agentview": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)}
    observations = policy.prepare_batch([image] * 4, ["lift the cube"] * 4)  # one group: a shared start state
    tokens, logp_old = policy.sample(observations, config.temperature, torch.Generator().manual_seed(0))
    advantages = group_relative_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0]])).flatten()
    batch = GRPOBatch(observations, tokens, logp_old, advantages, torch.ones_like(logp_old))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    first = grpo_update(policy, optimizer, batch, config)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # sampling and training log-probs agree
    assert first["entropy_is_estimate"] == 1.0 and first["valid_tokens"] == 4 * 56
    with torch.no_grad():
        change = (policy.log_prob(observations, tokens, config.temperature) - logp_old).sum(-1)
    assert float(change[advantages > 0].mean()) > 0.0 > float(change[advantages < 0].mean()), change
