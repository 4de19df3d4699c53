"""DPO: hand-computed loss and gradient, pair construction, and a real step on a tiny policy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from wmpo_core.rl.dpo import DPOConfig, build_preference_pairs, dpo_loss, dpo_update, sequence_log_probs


def test_dpo_loss_by_hand():
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    rc, rr = torch.tensor([-1.5]), torch.tensor([-1.0])
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # h_w = 0.5, h_l = -1.0, logits = 0.5 * 1.5 = 0.75, loss = log(1 + e^-0.75)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.75)), rel=1e-6)
    assert stats["reward_chosen"] == pytest.approx(0.25) and stats["reward_rejected"] == pytest.approx(-0.5)
    assert stats["reward_margin"] == pytest.approx(0.75) and stats["preference_accuracy"] == 1.0
    loss.backward()
    sigma_neg = 1.0 / (1.0 + math.exp(0.75))
    assert pc.grad.item() == pytest.approx(-0.5 * sigma_neg, rel=1e-6)
    assert pr.grad.item() == pytest.approx(0.5 * sigma_neg, rel=1e-6)


def test_sequence_log_probs_masks_padding():
    logp = torch.tensor([[-1.0, -2.0, -100.0]])
    assert float(sequence_log_probs(logp, torch.tensor([[1, 1, 0]]))) == -3.0
    assert float(sequence_log_probs(logp)) == -103.0


def test_pairs_from_same_start_state():
    rollouts = [
        {"id": "a", "seed": 0, "success": True},
        {"id": "b", "seed": 0, "success": False},
        {"id": "c", "seed": 0, "success": False},
        {"id": "d", "seed": 1, "success": True},
        {"id": "e", "seed": 1, "success": True},
        {"id": "f", "seed": 2, "success": False},
        {"id": "g", "seed": 2, "success": None},
        {"id": "h", "seed": 3, "success": True},
        {"id": "i", "seed": 3, "success": False},
    ]
    pairs = build_preference_pairs(rollouts, lambda r: r["success"], lambda r: r["seed"])
    assert sorted((w["id"], lo["id"]) for w, lo in pairs) == [("a", "b"), ("a", "c"), ("h", "i")]
    capped = build_preference_pairs(rollouts, lambda r: r["success"], lambda r: r["seed"], max_pairs_per_group=1)
    assert len(capped) == 2 and all(w["seed"] == lo["seed"] and w["success"] and not lo["success"] for w, lo in capped)
    # start states 1 (only successes) and 2 (only a failure) pair up through the task
    by_task = build_preference_pairs(
        rollouts, lambda r: r["success"], lambda r: r["seed"], fallback_key=lambda r: "lift"
    )
    assert sorted((w["id"], lo["id"]) for w, lo in by_task) == [("a", "b"), ("a", "c"), ("d", "f"), ("e", "f"), ("h", "i")]


class TinySequencePolicy(nn.Module):
    """Start-state id -> independent categorical over V tokens at each of T positions."""

    def __init__(self, tokens: int = 4, vocab: int = 6) -> None:
        super().__init__()
        self.tokens, self.vocab = tokens, vocab
        self.table = nn.Embedding(4, tokens * vocab)

    def sequence_logps(self, batch):
        states, action_tokens = batch
        logits = self.table(states).view(-1, self.tokens, self.vocab)
        token_logp = torch.log_softmax(logits, -1).gather(-1, action_tokens[..., None])[..., 0]
        return sequence_log_probs(token_logp)


def test_dpo_step_increases_chosen_minus_rejected_margin():
    torch.manual_seed(0)
    policy = TinySequencePolicy()
    reference = copy.deepcopy(policy).requires_grad_(False)
    # rollout k of start state s plays tokens (s + k + j) mod V: no two rollouts of a state coincide
    rollouts = [
        {"seed": s, "tokens": (torch.arange(policy.tokens) + s + k) % policy.vocab, "success": k % 2 == 0}
        for s in range(4)
        for k in range(3)
    ]
    pairs = build_preference_pairs(rollouts, lambda r: r["success"], lambda r: r["seed"])
    assert len(pairs) == 4 * 2  # per start state: 2 successes x 1 failure

    def stack(side):
        return torch.tensor([p[side]["seed"] for p in pairs]), torch.stack([p[side]["tokens"] for p in pairs])

    chosen, rejected = stack(0), stack(1)
    with torch.no_grad():
        ref_chosen, ref_rejected = reference.sequence_logps(chosen), reference.sequence_logps(rejected)
    config = DPOConfig(beta=0.1)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    first = dpo_update(policy.sequence_logps, optimizer, chosen, rejected, ref_chosen, ref_rejected, config)
    assert first["loss"] == pytest.approx(math.log(2.0), rel=1e-6)  # policy == reference before the step
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        margin = policy.sequence_logps(chosen) - policy.sequence_logps(rejected)
        ref_margin = ref_chosen - ref_rejected
    assert bool((margin > ref_margin).all()), (margin, ref_margin)
    second = dpo_update(policy.sequence_logps, optimizer, chosen, rejected, ref_chosen, ref_rejected, config)
    assert second["loss"] < first["loss"] and second["reward_margin"] > 0.0
    # the frozen reference did not move
    assert torch.equal(reference.sequence_logps(chosen), ref_chosen)
