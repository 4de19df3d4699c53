"""Imagination: the policy and the world model take turns, chunk by chunk, in pixel space.

From ``c`` real frames per trajectory: the policy samples K actions from the newest
(decoded) frame, the world model predicts K latent frames from the last ``c`` latents and
those actions, the frames are decoded, and so on until the horizon. All trajectories of
a batch (start states x group members) advance together. Frames stay on the world model's
device until the end (the policy reads and resizes them there); the result is copied to
the host once. Every random draw of
trajectory ``i``, the policy's and the world model's, comes from its own generator seeded
with ``seeds[i]``, so a batch reproduces its members run one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from wmpo_core.world_model.model import WorldModel


@dataclass
class PolicyChunk:
    """One sampled chunk for a batch: actions (B, K, 7) physical units, tokens (B, N) long, log_probs (B, N)."""

    actions: torch.Tensor
    tokens: torch.Tensor
    log_probs: torch.Tensor


@runtime_checkable
class ImaginationPolicy(Protocol):
    """What imagination needs from a policy."""

    chunk_size: int

    def sample_chunk(
        self, frames: torch.Tensor, instruction: str, generators: Sequence[torch.Generator]
    ) -> PolicyChunk:
        """frames (B, H, W, 3) uint8 on the world model's device -> a chunk per frame; trajectory i draws
        only from generators[i]."""
        ...


@dataclass
class Imagination:
    """Imagined trajectories: frames (B, c + horizon, H, W, 3) uint8 with the c real ones first,
    actions (B, horizon, 7), tokens and log_probs (B, chunks, N) as the policy returned them."""

    frames: np.ndarray
    actions: np.ndarray
    tokens: torch.Tensor
    log_probs: torch.Tensor
    context_frames: int
    seeds: list[int]
    # (B, horizon) success probability of every imagined frame from a success head, when one was given.
    success_probs: np.ndarray | None = None

    @property
    def imagined_frames(self) -> np.ndarray:
        """Only the generated frames, (B, horizon, H, W, 3)."""
        return self.frames[:, self.context_frames :]


class ReplayPolicy:
    """Replays given action sequences (B, T, 7): for fidelity evaluation and tests. Tokens are empty."""

    def __init__(self, actions: np.ndarray | torch.Tensor, chunk_size: int):
        self.actions = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        self.chunk_size = chunk_size
        self._cursor = 0

    def sample_chunk(self, frames: torch.Tensor, instruction: str, generators: Sequence[torch.Generator]) -> PolicyChunk:
        """The next K recorded actions of every trajectory (zero-padded past the end)."""
        b, k = len(frames), self.chunk_size
        if b != len(self.actions):
            raise ValueError(f"ReplayPolicy: {b} frames but {len(self.actions)} action sequences")
        chunk = torch.zeros((b, k, self.actions.shape[-1]))
        part = self.actions[:, self._cursor : self._cursor + k]
        chunk[:, : part.shape[1]] = part
        self._cursor += k
        empty = torch.zeros((b, 0))
        return PolicyChunk(chunk, empty.long(), empty)


class VLAImaginationPolicy:
    """Adapts ``wmpo_core.policy`` VLA models (parallel decoding) to :class:`ImaginationPolicy`.

    Sampling uses the Gumbel-max trick with per-trajectory noise: identical in distribution
    to the policy's own categorical sampling, but trajectory i consumes only generator i.
    """

    def __init__(self, policy, camera: str, temperature: float = 1.0):
        cameras = tuple(getattr(policy.config, "cameras", (camera,)))
        if cameras != (camera,):
            raise ValueError(f"policy reads cameras {cameras}; the world model imagines only {camera!r}")
        if getattr(policy.config, "proprio_dim", 0):
            raise ValueError("policy needs proprio, which imagination cannot provide")
        self.policy = policy
        self.camera = camera
        self.temperature = temperature
        self.chunk_size = policy.chunk_size

    @torch.no_grad()
    def sample_chunk(self, frames: torch.Tensor, instruction: str, generators: Sequence[torch.Generator]) -> PolicyChunk:
        """Batched forward pass, per-trajectory Gumbel noise, actions decoded to physical units.

        The frames go to the policy's device (a no-op when it shares the world model's) and are resized there.
        """
        policy = self.policy
        frames = torch.as_tensor(frames).to(policy.device)
        batch = policy.prepare_batch([{self.camera: f} for f in frames], [instruction] * len(frames))
        decoding = getattr(policy.config, "decoding", "parallel")
        if self.temperature > 0 or decoding == "autoregressive":
            # the policy's own sampling in its own decoding (OpenVLA token by token, OFT in one bidirectional
            # pass), each trajectory its own noise; the log-probs are the ones GRPO's update recomputes
            tokens, logp = policy.sample(batch, self.temperature, generator=list(generators))
        else:  # greedy over the action bins, log-probs at temperature 1
            logits = policy.action_logits(batch, decoding=decoding).float()
            bins = logits.argmax(-1)
            tokens = policy.action_tokenizer.bins_to_tokens(bins)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, bins[..., None])[..., 0]
        actions = torch.as_tensor(np.asarray(policy.tokens_to_actions(tokens), dtype=np.float32))
        return PolicyChunk(actions, tokens, logp)


def pad_start(frames: np.ndarray, context_frames: int) -> np.ndarray:
    """(B, n, H, W, 3) real start frames -> (B, c, H, W, 3): the first frame repeated in front if n < c."""
    n = frames.shape[1]
    if n >= context_frames:
        return frames[:, -context_frames:]
    return np.concatenate([np.repeat(frames[:, :1], context_frames - n, axis=1), frames], axis=1)


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    policy: ImaginationPolicy,
    initial_frames: np.ndarray,
    instruction: str,
    horizon: int,
    seeds: Sequence[int],
    success_head: torch.nn.Module | None = None,
) -> Imagination:
    """Roll out ``len(seeds)`` trajectories of ``horizon`` frames from real frames (B, n <= c, H, W, 3) uint8.

    With ``success_head`` (:class:`~wmpo_core.world_model.success_head.SuccessHead`), every chunk is also
    scored from the (imagined) context latents and the chunk's actions: ``success_probs``.
    """
    initial_frames = np.asarray(initial_frames)
    if initial_frames.dtype != np.uint8 or initial_frames.ndim != 5:
        raise ValueError(f"initial_frames: expected uint8 (B, c, H, W, 3), got {initial_frames.dtype} {initial_frames.shape}")
    size = world_model.settings.image_size
    if initial_frames.shape[2:4] != (size, size):
        raise ValueError(f"initial_frames: {initial_frames.shape[2:4]} px, world model expects {size}x{size}")
    b, c, k = len(initial_frames), world_model.context_frames, world_model.chunk_size
    if len(seeds) != b:
        raise ValueError(f"seeds: got {len(seeds)}, expected one per trajectory ({b})")
    if policy.chunk_size != k:
        raise ValueError(f"policy chunk size {policy.chunk_size} != world-model chunk size {k}")
    start = pad_start(initial_frames, c)
    policy_gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    # A separate stream for the world model keeps its draws independent of how many the policy made.
    world_gens = [torch.Generator().manual_seed(int(s) + 0x5EED) for s in seeds]

    start = torch.from_numpy(start).to(world_model.device)
    latents = world_model.encode(start)
    frames = [start]
    actions, tokens, log_probs, probs = [], [], [], []
    newest = start[:, -1]
    for _ in range((horizon + k - 1) // k):
        chunk = policy.sample_chunk(newest, instruction, policy_gens)
        if success_head is not None:
            probs.append(torch.sigmoid(success_head(latents[:, -c:], chunk.actions.to(latents))).float())
        predicted = world_model.predict_chunk(latents[:, -c:], chunk.actions, world_gens)
        decoded = world_model.decode(predicted)
        latents = torch.cat([latents[:, -c:], predicted], dim=1)
        frames.append(decoded)
        actions.append(chunk.actions)
        tokens.append(chunk.tokens)
        log_probs.append(chunk.log_probs)
        newest = decoded[:, -1]
    return Imagination(
        frames=torch.cat(frames, dim=1)[:, : c + horizon].cpu().numpy(),  # the one copy to the host
        actions=torch.cat(actions, dim=1)[:, :horizon].cpu().numpy(),
        tokens=torch.stack(tokens, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        context_frames=c,
        seeds=[int(s) for s in seeds],
        success_probs=torch.cat(probs, dim=1)[:, :horizon].cpu().numpy() if probs else None,
    )


def imagine_group(
    world_model: WorldModel,
    policy: ImaginationPolicy,
    start_frames: np.ndarray,
    instruction: str,
    horizon: int,
    group_size: int = 8,
    seed: int = 0,
) -> Imagination:
    """G imagined trajectories per start state, all in one batch (B = starts x G, start-major).

    Trajectory ``s * G + g`` uses seed ``seed + s * G + g``.
    """
    starts = np.asarray(start_frames)
    batch = np.repeat(starts, group_size, axis=0)
    seeds = [seed + i for i in range(len(batch))]
    return imagine(world_model, policy, batch, instruction, horizon, seeds)
