"""Trajectory batches for policy improvement, from imagination, from the simulator, or from recorded bags.

One :class:`TrajectoryBatch` holds B trajectories cut into R policy calls ("rows"): row r
is what the policy saw before one action chunk (camera images), the K x D action tokens
it sampled there, their log-probabilities at sampling time (``logp_old``) and a token
mask (0 for steps never executed: after the episode ended or succeeded). Trajectory-level
fields carry the binary reward, the group (G trajectories sharing a start state), the
start-state id and the success step. The same structure feeds GRPO (imagination and
online simulator) and DPO, so the three trainers differ only in where rows come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from wmpo_core.rl.grpo import GRPOBatch

log = logging.getLogger(__name__)


@dataclass
class TrajectoryBatch:
    """B trajectories flattened to R policy calls; see the module docstring."""

    images: dict[str, np.ndarray]  # camera -> (R, H, W, 3) uint8, what the policy saw at each call
    instructions: list[str]  # (B,) instruction of each trajectory
    action_tokens: Tensor  # (R, N) long vocabulary ids sampled at each call
    logp_old: Tensor  # (R, N) log-probs at sampling time (sampling temperature)
    mask: Tensor  # (R, N) float, 1 for tokens of executed steps
    row_trajectory: Tensor  # (R,) long, trajectory index of each row
    reward: Tensor  # (B,) float binary success reward
    group_id: Tensor  # (B,) long, trajectories with the same id share a start state and a group
    start_id: Tensor  # (B,) long, start-state id (simulator seed or episode index)
    length: Tensor  # (B,) long, steps executed (to the success when there is one)
    success_step: Tensor  # (B,) long, step at which success was declared, -1 if never

    def __post_init__(self) -> None:
        r, b = int(self.action_tokens.shape[0]), int(self.reward.shape[0])
        for name in ("logp_old", "mask"):
            if tuple(getattr(self, name).shape) != tuple(self.action_tokens.shape):
                raise ValueError(f"TrajectoryBatch.{name}: shape {tuple(getattr(self, name).shape)}, "
                                 f"expected {tuple(self.action_tokens.shape)}")
        for cam, arr in self.images.items():
            if arr.shape[0] != r or arr.dtype != np.uint8:
                raise ValueError(f"TrajectoryBatch.images[{cam!r}]: expected uint8 with {r} rows, got {arr.dtype} {arr.shape}")
        for name in ("group_id", "start_id", "length", "success_step"):
            if int(getattr(self, name).shape[0]) != b:
                raise ValueError(f"TrajectoryBatch.{name}: {getattr(self, name).shape[0]} entries, expected {b}")
        if len(self.instructions) != b or int(self.row_trajectory.shape[0]) != r:
            raise ValueError("TrajectoryBatch: instructions / row_trajectory do not match the batch")

    # ------------------------------------------------------------------ sizes
    @property
    def num_trajectories(self) -> int:
        """B."""
        return int(self.reward.shape[0])

    @property
    def num_rows(self) -> int:
        """R, policy calls over all trajectories."""
        return int(self.action_tokens.shape[0])

    # ------------------------------------------------------------------ selection
    def select(self, trajectories: Sequence[int] | Tensor) -> TrajectoryBatch:
        """The sub-batch of the given trajectories (in that order), rows renumbered."""
        idx = torch.as_tensor(trajectories, dtype=torch.long).flatten()
        rows, new_owner = [], []
        for new, old in enumerate(idx.tolist()):
            own = torch.nonzero(self.row_trajectory == old).flatten()
            rows.append(own)
            new_owner.append(torch.full((len(own),), new, dtype=torch.long))
        row_idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        np_rows = row_idx.numpy()
        return TrajectoryBatch(
            images={c: a[np_rows] for c, a in self.images.items()},
            instructions=[self.instructions[i] for i in idx.tolist()],
            action_tokens=self.action_tokens[row_idx], logp_old=self.logp_old[row_idx], mask=self.mask[row_idx],
            row_trajectory=torch.cat(new_owner) if new_owner else torch.zeros(0, dtype=torch.long),
            reward=self.reward[idx], group_id=self.group_id[idx], start_id=self.start_id[idx],
            length=self.length[idx], success_step=self.success_step[idx],
        )

    def groups(self) -> list[TrajectoryBatch]:
        """One sub-batch per group id, in order of first appearance."""
        seen: list[int] = []
        for g in self.group_id.tolist():
            if g not in seen:
                seen.append(g)
        return [self.select(torch.nonzero(self.group_id == g).flatten()) for g in seen]

    def group_rewards(self) -> Tensor:
        """(num_groups, G) rewards; every group must have the same size."""
        groups = self.groups()
        sizes = {g.num_trajectories for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"group_rewards: groups have different sizes {sorted(sizes)}")
        return torch.stack([g.reward for g in groups])

    # ------------------------------------------------------------------ model inputs
    def observations(self, policy: Any, rows: Tensor | None = None) -> Any:
        """The policy's input batch (a ``VLABatch``) for ``rows`` (default: all)."""
        rows = torch.arange(self.num_rows) if rows is None else rows
        np_rows = rows.numpy()
        images = [{c: a[r] for c, a in self.images.items()} for r in np_rows]
        instructions = [self.instructions[int(t)] for t in self.row_trajectory[rows].tolist()]
        return policy.prepare_batch(images, instructions).to(policy.device)

    def grpo_batch(self, policy: Any, trajectory_advantages: Tensor) -> GRPOBatch:
        """All rows as a :class:`GRPOBatch`; each row inherits its trajectory's advantage."""
        device = policy.device
        return GRPOBatch(
            observations=self.observations(policy),
            action_tokens=self.action_tokens.to(device),
            logp_old=self.logp_old.to(device),
            advantages=trajectory_advantages[self.row_trajectory].to(device),
            mask=self.mask.to(device),
        )

    def sequence_log_probs(self, policy: Any, temperature: float = 1.0) -> Tensor:
        """(B,) log pi(trajectory): masked sum over every token of every row (differentiable)."""
        token_logp = policy.log_prob(self.observations(policy), self.action_tokens.to(policy.device), temperature)
        row_logp = (token_logp * self.mask.to(token_logp)).sum(-1)
        out = torch.zeros(self.num_trajectories, dtype=row_logp.dtype, device=row_logp.device)
        return out.index_add(0, self.row_trajectory.to(row_logp.device), row_logp)

    def summary(self) -> dict[str, float]:
        """Numbers to log about the batch."""
        success = self.reward > 0
        lengths = self.length[success].float()
        return {
            "trajectories": float(self.num_trajectories),
            "success_rate": float(success.float().mean()) if self.num_trajectories else 0.0,
            "mean_success_length": float(lengths.mean()) if len(lengths) else float("nan"),
            "valid_tokens": float(self.mask.sum()),
        }


def concatenate(batches: Sequence[TrajectoryBatch]) -> TrajectoryBatch:
    """Stack batches; trajectory indices of later batches are shifted."""
    if not batches:
        raise ValueError("concatenate: no batches")
    offsets = np.cumsum([0] + [b.num_trajectories for b in batches[:-1]])
    cams = set(batches[0].images)
    if any(set(b.images) != cams for b in batches):
        raise ValueError("concatenate: batches were recorded with different cameras")
    return TrajectoryBatch(
        images={c: np.concatenate([b.images[c] for b in batches]) for c in cams},
        instructions=[i for b in batches for i in b.instructions],
        action_tokens=torch.cat([b.action_tokens for b in batches]),
        logp_old=torch.cat([b.logp_old for b in batches]),
        mask=torch.cat([b.mask for b in batches]),
        row_trajectory=torch.cat([b.row_trajectory + int(o) for b, o in zip(batches, offsets, strict=True)]),
        reward=torch.cat([b.reward for b in batches]),
        group_id=torch.cat([b.group_id for b in batches]),
        start_id=torch.cat([b.start_id for b in batches]),
        length=torch.cat([b.length for b in batches]),
        success_step=torch.cat([b.success_step for b in batches]),
    )


def require_image_only(policy: Any) -> None:
    """ValueError for a policy that reads proprio: trajectory batches keep only what the cameras saw."""
    if int(getattr(policy.config, "proprio_dim", 0)) > 0:
        raise ValueError(f"policy {policy.version}: config.proprio_dim = {policy.config.proprio_dim}; the trainers "
                         "support image-only policies (as WMPO's), set proprio_dim to 0")


def executed_token_mask(num_chunks: int, chunk_size: int, action_dim: int, length: int) -> Tensor:
    """(num_chunks, K * D) float: 1 for the tokens of steps ``< length`` (tokens are step-major)."""
    step = torch.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
    return (step < length).float().repeat_interleave(action_dim, dim=1)


# =========================================================================== rewards
class TrajectoryReward(Protocol):
    """Binary reward of imagined trajectories: frames (T, H, W, 3) uint8 -> (success, success frame or None)."""

    def __call__(self, trajectories: Sequence[np.ndarray]) -> list[tuple[bool, int | None]]:
        """One (success, first success frame index) per trajectory."""
        ...


class VideoReward:
    """The VideoMAE reward model as a :class:`TrajectoryReward`: success at the first clip above ``tau``
    (rule "any"), or when the last clip is above it (rule "final": the whole trajectory counts, no success frame)."""

    def __init__(self, reward_model: Any):
        self.model = reward_model
        self.settings = reward_model.settings

    def __call__(self, trajectories: Sequence[np.ndarray]) -> list[tuple[bool, int | None]]:
        """Score every clip (stride from the settings) and report the first clip end above tau after min_frame."""
        from wmpo_core.data.frames import resize_frames
        from wmpo_core.reward.model import success_from_clip_scores

        out: list[tuple[bool, int | None]] = []
        for frames in trajectories:
            ends, scores = self.model.clip_scores(resize_frames(np.asarray(frames), self.settings.image_size))
            if self.settings.rule == "final":
                success, _ = success_from_clip_scores(ends, scores, self.settings.tau, self.settings.min_frame, "final")
                out.append((success, None))
                continue
            above = (scores > self.settings.tau) & (ends >= self.settings.min_frame)
            hits = np.nonzero(above)[0]
            out.append((True, int(ends[hits[0]])) if len(hits) else (False, None))
        return out


class HeadReward:
    """The world model's success head as the reward (beyond the paper; `wmpo train-success-head`).

    Imagination scores every chunk from its (imagined) context latents and actions; a trajectory succeeds when
    its score under the head's rule is above the head's tau: rule "final", the last imagined frame (the whole
    horizon counts, no success frame); rule "any", the first frame above tau ends it there.
    """

    def __init__(self, success_head: Any, info: Any):
        self.success_head = success_head
        self.tau = float(info.tau)
        self.rule = info.rule

    def __call__(self, trajectories: Sequence[np.ndarray]) -> list[tuple[bool, int | None]]:
        raise TypeError("HeadReward scores imagination from its latents: use imagine_trajectories (from_probs)")

    def score(self, trajectories: Sequence[np.ndarray], probs: np.ndarray,
              offsets: Sequence[int]) -> list[tuple[bool, int | None]]:
        """What imagination reports: :meth:`from_probs`, success steps moved to frame indices of the scored
        trajectories (``offsets[i]``: index of the last real frame of trajectory i)."""
        return [(ok, None if step is None else offsets[i] + step) for i, (ok, step) in enumerate(self.from_probs(probs))]

    def from_probs(self, probs: np.ndarray) -> list[tuple[bool, int | None]]:
        """(B, horizon) per imagined frame -> (success, success step counted from the last real frame)."""
        out: list[tuple[bool, int | None]] = []
        for p in np.asarray(probs, dtype=np.float64):
            if self.rule == "final":
                out.append((bool(p[-1] > self.tau), None))
                continue
            hits = np.nonzero(p > self.tau)[0]
            out.append((True, int(hits[0]) + 1) if len(hits) else (False, None))
        return out


class AgreementReward:
    """Success only where the video reward model and the world model's success head both see it (beyond the
    paper): a policy must fool two differently built judges, one reading decoded frames, the other the
    latents and actions. The success frame is the later of the two (None, "the whole trajectory", when
    either rule is "final")."""

    def __init__(self, video: VideoReward, head: HeadReward):
        self.video = video
        self.head = head
        self.success_head = head.success_head  # imagination computes the head's probabilities

    def __call__(self, trajectories: Sequence[np.ndarray]) -> list[tuple[bool, int | None]]:
        raise TypeError("AgreementReward needs the head's probabilities: use imagine_trajectories")

    def score(self, trajectories: Sequence[np.ndarray], probs: np.ndarray,
              offsets: Sequence[int]) -> list[tuple[bool, int | None]]:
        """Both judges' verdicts on the same trajectories, ANDed."""
        out: list[tuple[bool, int | None]] = []
        for (ok_v, at_v), (ok_h, at_h) in zip(self.video(trajectories), self.head.score(trajectories, probs, offsets),
                                              strict=True):
            both = ok_v and ok_h
            out.append((both, max(at_v, at_h) if both and at_v is not None and at_h is not None else None))
        return out


# =========================================================================== imagination
@dataclass
class StartStates:
    """Real frames imagination starts from: frames (S, n, H, W, 3) uint8 (the n real frames before the
    first imagined one), one instruction and id each.

    ``prefixes`` (branched starts only): start i begins at step ``len(prefixes[i])`` of its recorded
    episode, and ``prefixes[i]`` holds that episode's real frames before it (frames[i] is its tail). The
    reward then scores the real prefix followed by the imagined frames, so its frame indices are the
    episode's own steps; without prefixes every start is an episode's first frame.
    """

    frames: np.ndarray
    instructions: list[str]
    ids: list[str]
    prefixes: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.frames.shape[0])


START_MODES = ("first", "branch")


def load_start_states(episodes_dir: str | Path | Sequence[str | Path], camera: str, image_size: int, *,
                      start: str = "first", branch_before: int = 24, context_frames: int = 4) -> StartStates:
    """Start states of every readable episode bag (bad bags are logged and skipped).

    ``start="first"`` (the paper): each episode's first frame. ``start="branch"``: the ``context_frames``
    real frames before step ``outcome - branch_before``, where the outcome step is a success's recorded
    success step and, for a failure, the median success step of the successes in the folder (clamped to
    its length; the first frame when no episode has a recorded success). The decisive moment then falls
    inside a short imagined horizon, where the world model is accurate; a departure from the paper,
    measured on the imagination ladder (`wmpo diagnose-imagination`, rung d against e).
    """
    from wmpo_core.data.frames import load_episodes

    if start not in START_MODES:
        raise ValueError(f"start: expected one of {START_MODES}, got {start!r}")
    episodes = load_episodes(episodes_dir, camera, image_size)
    if start == "first":
        return StartStates(
            frames=np.stack([ep.frames[:1] for ep in episodes]),
            instructions=[ep.instruction for ep in episodes],
            ids=[ep.episode_id for ep in episodes],
        )
    from wmpo_core.reward.ladder import outcome_steps

    if branch_before < 0 or context_frames < 1:
        raise ValueError(f"branch_before >= 0 and context_frames >= 1 expected, got {branch_before}, {context_frames}")
    have_outcome = any(ep.success and ep.success_step is not None for ep in episodes)
    frames, prefixes = [], []
    for ep, outcome in zip(episodes, outcome_steps(episodes), strict=True):
        t = max(1, outcome - branch_before) if have_outcome else 1
        t = min(t, len(ep.frames))
        window = ep.frames[max(0, t - context_frames) : t]
        if len(window) < context_frames:  # too early in the episode: repeat its first frame in front
            window = np.concatenate([np.repeat(window[:1], context_frames - len(window), axis=0), window])
        frames.append(window)
        prefixes.append(ep.frames[:t])
    return StartStates(np.stack(frames), [ep.instruction for ep in episodes], [ep.episode_id for ep in episodes],
                       prefixes)


def imagine_trajectories(
    world_model: Any,
    policy: Any,
    reward: TrajectoryReward,
    starts: StartStates,
    start_indices: Sequence[int],
    horizon: int,
    group_size: int,
    temperature: float,
    seed: int,
    first_group_id: int = 0,
) -> TrajectoryBatch:
    """G imagined trajectories for each chosen start state, scored by ``reward``.

    Row j of a trajectory is the frame the policy saw before chunk j (the last real frame
    for j = 0, then the newest imagined frame). Tokens of steps at or after the success
    step are masked: the trajectory ends there, as a real episode would.
    """
    from wmpo_core.world_model.imagine import VLAImaginationPolicy, imagine

    camera = world_model.settings.camera
    adapter = VLAImaginationPolicy(policy, camera=camera, temperature=temperature)
    k, d = policy.chunk_size, policy.action_dim
    parts: list[TrajectoryBatch] = []
    by_instruction: dict[str, list[int]] = {}
    for position, s in enumerate(start_indices):  # one imagination call per instruction
        by_instruction.setdefault(starts.instructions[s], []).append(position)
    for instruction, positions in by_instruction.items():
        chosen = [int(start_indices[p]) for p in positions]
        # Trajectory g of the start at position p always draws from seed + p * G + g, whatever the batching.
        seeds = [seed + p * group_size + g for p in positions for g in range(group_size)]
        head = getattr(reward, "success_head", None)
        imagined = imagine(world_model, adapter, np.repeat(starts.frames[chosen], group_size, axis=0),
                           instruction, horizon, seeds, success_head=head)
        c = imagined.context_frames
        if starts.prefixes is None:
            # The reward sees the last real frame followed by the imagined ones; frame index = step count.
            trajectories = [f[c - 1 :] for f in imagined.frames]
            offsets = [0] * len(trajectories)
        else:
            # Branched: the episode's real frames up to the branch, then the imagined ones (episode steps);
            # index (branch - 1), the last real frame, is step 0 of the imagined trajectory.
            trajectories, offsets = [], []
            for i, f in enumerate(imagined.frames):
                prefix = starts.prefixes[chosen[i // group_size]]
                trajectories.append(np.concatenate([prefix, f[c:]]))
                offsets.append(len(prefix) - 1)
        if head is not None:  # the head (alone or with the video model) reads the imagined latents' scores
            scored = reward.score(trajectories, imagined.success_probs, offsets)
        else:
            scored = reward(trajectories)
        n_chunks = imagined.tokens.shape[1]
        for i, (success, success_frame) in enumerate(scored):
            position, s = positions[i // group_size], chosen[i // group_size]
            length = int(success_frame) - offsets[i] if success and success_frame is not None else horizon
            length = max(1, min(length, horizon))
            view = np.stack([imagined.frames[i, c - 1 + j * k] for j in range(n_chunks)])
            parts.append(TrajectoryBatch(
                images={camera: view},
                instructions=[instruction],
                action_tokens=imagined.tokens[i].long(),
                logp_old=imagined.log_probs[i].float(),
                mask=executed_token_mask(n_chunks, k, d, length),
                row_trajectory=torch.zeros(n_chunks, dtype=torch.long),
                reward=torch.tensor([float(success)]),
                group_id=torch.tensor([first_group_id + position]),
                start_id=torch.tensor([s]),
                length=torch.tensor([length]),
                success_step=torch.tensor([length if success else -1]),
            ))
    # Order trajectories as the start states were given, group members contiguous.
    parts.sort(key=lambda p: int(p.group_id[0]))
    return concatenate(parts)


# =========================================================================== simulator
@dataclass
class SimRollouts:
    """Trajectories run in the simulator, with the seeds they started from."""

    batch: TrajectoryBatch
    seeds: list[int]
    episode_lengths: list[int]


@torch.no_grad()
def simulate_trajectories(
    env: Any,
    policy: Any,
    seeds: Sequence[int],
    group_size: int,
    temperature: float,
    generator: torch.Generator,
    max_steps: int | None = None,
    first_group_id: int = 0,
    on_episode: Callable[[int, bool, int], None] | None = None,
) -> SimRollouts:
    """Run ``group_size`` sampled episodes from each seed, closed loop, recording what the policy sampled.

    The policy samples each chunk at ``temperature`` from ``generator``; its tokens and
    log-probs are kept exactly as sampled (the GRPO ratio starts at 1). The reward is the
    simulator's own success check; an episode stops at success or ``max_steps``.
    """
    from wmpo_core.sim import run_episode

    require_image_only(policy)
    was_training = policy.training
    policy.eval()
    cameras = tuple(policy.config.cameras)
    k, d = policy.chunk_size, policy.action_dim
    parts: list[TrajectoryBatch] = []
    run_seeds: list[int] = []
    lengths: list[int] = []
    try:
        for gi, seed in enumerate(seeds):
            for _ in range(group_size):
                calls: list[tuple[dict[str, np.ndarray], Tensor, Tensor]] = []

                def sample_chunk(obs: Any, calls: list = calls) -> np.ndarray:
                    images = {c: np.ascontiguousarray(obs.images[c]) for c in cameras}
                    batch = policy.prepare_batch([images], [env.instruction])
                    tokens, logp = policy.sample(batch, temperature, generator)
                    calls.append((images, tokens[0].cpu(), logp[0].cpu()))
                    return policy.tokens_to_actions(tokens)[0]

                policy.reset()
                result = run_episode(env, sample_chunk, seed=int(seed), max_steps=max_steps, record_frames=False,
                                     execute_steps=k)
                n = len(calls)
                parts.append(TrajectoryBatch(
                    images={c: np.stack([call[0][c] for call in calls]) for c in cameras},
                    instructions=[env.instruction],
                    action_tokens=torch.stack([call[1] for call in calls]).long(),
                    logp_old=torch.stack([call[2] for call in calls]).float(),
                    mask=executed_token_mask(n, k, d, result.length),
                    row_trajectory=torch.zeros(n, dtype=torch.long),
                    reward=torch.tensor([float(result.success)]),
                    group_id=torch.tensor([first_group_id + gi]),
                    start_id=torch.tensor([int(seed)]),
                    length=torch.tensor([result.length]),
                    success_step=torch.tensor([result.success_step if result.success_step is not None else -1]),
                ))
                run_seeds.append(int(seed))
                lengths.append(int(result.length))
                if on_episode is not None:
                    on_episode(int(seed), bool(result.success), int(result.length))
    finally:
        policy.train(was_training)
    return SimRollouts(concatenate(parts), run_seeds, lengths)


# =========================================================================== recorded episodes
def trajectories_from_episodes(
    episode_paths: Sequence[str | Path], policy: Any, limit: int | None = None
) -> tuple[TrajectoryBatch, list[str]]:
    """Recorded episode bags -> trajectories for DPO: one row every K executed steps.

    The executed actions are tokenized with the policy's own normalization and action
    tokenizer; ``logp_old`` is left at zero (DPO needs only the reference policy). The
    start-state id is the recorded seed when there is one, so rollouts from the same
    start pair up. Unlabeled or unreadable episodes are logged by path and skipped.
    Returns the batch and the ids of the episodes used.
    """
    from wmpo_core.data.bag import load_episode

    require_image_only(policy)
    cameras = list(policy.config.cameras)
    k, d = policy.chunk_size, policy.action_dim
    stats = policy.norm_stats.get(policy.config.unnorm_key, "action")
    parts: list[TrajectoryBatch] = []
    used: list[str] = []
    seed_ids: dict[Any, int] = {}
    for path in episode_paths:
        if limit is not None and len(parts) >= limit:
            break
        try:
            ep = load_episode(path, cameras=cameras)
        except Exception as exc:  # one bad bag must not stop training on the others
            log.warning("skipping %s: %s", path, exc)
            continue
        if ep.metadata.success is None or ep.num_steps == 0:
            log.warning("skipping %s: %s", path, "no success label" if ep.metadata.success is None else "no steps")
            continue
        n = (ep.num_steps + k - 1) // k
        padded = np.zeros((n * k, d), dtype=np.float64)
        padded[: ep.num_steps] = ep.actions
        tokens = policy.action_tokenizer.encode(stats.normalize(padded)).reshape(n, k * d)
        starts = np.arange(n) * k
        key = ep.metadata.seed if ep.metadata.seed is not None else f"episode:{ep.metadata.episode_id}"
        seed_ids.setdefault(key, len(seed_ids))
        success = bool(ep.metadata.success)
        # Steps recorded after the task was done (``--steps-after-success``) are not part of the attempt.
        length = min(ep.num_steps, ep.success_step) if success and ep.success_step else ep.num_steps
        parts.append(TrajectoryBatch(
            images={c: np.ascontiguousarray(ep.frames[c][starts]) for c in cameras},
            instructions=[ep.metadata.instruction],
            action_tokens=torch.from_numpy(tokens).long(),
            logp_old=torch.zeros((n, k * d)),
            mask=executed_token_mask(n, k, d, length),
            row_trajectory=torch.zeros(n, dtype=torch.long),
            reward=torch.tensor([float(success)]),
            group_id=torch.tensor([seed_ids[key]]),
            start_id=torch.tensor([seed_ids[key]]),
            length=torch.tensor([length]),
            success_step=torch.tensor([length if success else -1]),
        ))
        used.append(ep.metadata.episode_id)
    if not parts:
        raise ValueError("no labeled, readable episodes among the given bags")
    return concatenate(parts), used
