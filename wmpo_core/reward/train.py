"""Training and calibration of the video success classifier.

Labelled clips (clip_len frames, every ``stride`` frames) of an episode whose bag records
when success first showed (``success_step``, from ``/wmpo/success``; frames after it exist
when recording went on past the success, ``--steps-after-success``):

- positive: every clip ending at or after the success step on a frame whose success check holds
  (the task is visibly done; a cube lifted and then dropped is not done in the frames after the drop,
  which are left out);
- negative: every clip ending more than ``success_margin`` frames before it (reaching, grasping,
  the first centimetres of the lift: the near misses a failed episode also shows), and every
  clip of a failed episode;
- the ``success_margin`` frames just before the success step are left out (half-done).

Without a recorded success step (an operator's label at the end of an episode), the final
``final_clips`` clips of a success are positive and only its early clips (ending in the first
``early_fraction`` of the episode) are negative. Episodes without a success label are skipped.
The threshold ``tau`` is chosen on validation episodes to maximize trajectory-level F1 under
the any-clip rule.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wmpo_core.config_io import dataclass_from_json
from wmpo_core.data.frames import EpisodeFrames, resize_frames
from wmpo_core.reward.model import (
    RewardModel,
    RewardSettings,
    check_rule,
    clip_end_indices,
    gather_clips,
    load_backbone,
)
from wmpo_core.stats import balanced_accuracy, calibrate_tau, f1_score, roc_auc  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass
class RewardTrainConfig:
    """Defaults train the embedded reward model on CPU in minutes."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    camera: str = "agentview"
    image_size: int = 64
    clip_len: int = 8
    stride: int = 8
    final_clips: int = 2
    early_fraction: float = 0.25
    success_margin: int = 4  # frames before a recorded success step whose clips are not labelled
    min_frame: int = 0
    # How clip scores make a trajectory's score: "any" clip (the paper) or the "final" one (see reward.model).
    rule: str = "any"
    val_fraction: float = 0.2
    score_stride: int = 1
    # Training-clip augmentation: random left-right mirror and a shift of up to this many pixels (0: off).
    flip: bool = True
    shift_px: int = 2
    # Hard-negative mining: every ``mining_every`` steps, score up to ``mining_pool`` negative clips and draw
    # this fraction of each batch's negatives from the highest-scoring quarter (0: uniform negatives). Under
    # the any-clip rule one confident clip makes a failure a success, so the hardest negatives decide precision.
    hard_negative_fraction: float = 0.5
    mining_every: int = 100
    mining_pool: int = 1024
    # Overrides of the tiny VideoMAEConfig (hidden_size, num_hidden_layers, ...).
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_rule(self.rule)  # here, not after an hour of training

    @classmethod
    def from_json(cls, path: str | Path) -> RewardTrainConfig:
        """Read a JSON config; unknown fields are an error naming the file."""
        return dataclass_from_json(cls, path, "reward config")


def labelled_clip_ends(
    length: int, success: bool | None, clip_len: int, stride: int, final_clips: int = 2, early_fraction: float = 0.25,
    success_step: int | None = None, success_margin: int = 4, success_flags: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """(clip end frame, label) pairs of one episode under the rule in the module docstring.

    ``success_flags`` (length ``length``) is the success check of every frame; without it every frame
    from ``success_step`` on counts as done.
    """
    if success is None:
        return []
    ends = clip_end_indices(length, clip_len, stride)
    if not success:
        return [(int(e), 0) for e in ends]
    if success_step is not None and 0 <= success_step < length:
        negative = [int(e) for e in ends if e < success_step - success_margin]
        done = range(success_step, length)
        if success_flags is not None:
            done = [e for e in done if success_flags[e]]
        return [(e, 0) for e in negative] + [(e, 1) for e in done]
    positive = set(ends[-final_clips:].tolist())
    early = [int(e) for e in ends if e < early_fraction * length and e not in positive]
    return [(e, 0) for e in early] + [(int(e), 1) for e in sorted(positive)]


def augment_clips(clips: np.ndarray, rng: np.random.Generator, flip: bool = True, shift_px: int = 0) -> np.ndarray:
    """Mirror each (L, H, W, 3) clip left-right with probability 1/2 and shift it by up to ``shift_px`` pixels.

    The same transform applies to every frame of a clip, so motion within the clip is kept; shifted-in
    borders repeat the edge pixels.
    """
    out = np.array(clips, copy=True)
    n, _, h, w, _ = out.shape
    for k in range(n):
        if flip and rng.random() < 0.5:
            out[k] = out[k, :, :, ::-1]
        if shift_px > 0:
            dy, dx = rng.integers(-shift_px, shift_px + 1, 2)
            padded = np.pad(out[k], ((0, 0), (shift_px, shift_px), (shift_px, shift_px), (0, 0)), mode="edge")
            out[k] = padded[:, shift_px + dy : shift_px + dy + h, shift_px + dx : shift_px + dx + w]
    return out


def mine_hard_negatives(model: RewardModel, negatives: Sequence[tuple[int, int, int]],
                        episodes: Sequence[EpisodeFrames], pool: int, generator: torch.Generator,
                        batch_size: int = 64) -> list[tuple[int, int, int]]:
    """The highest-scoring quarter of (up to) ``pool`` randomly chosen negative clips."""
    chosen = torch.randperm(len(negatives), generator=generator)[:pool].tolist()
    items = [negatives[j] for j in chosen]
    clip_len = model.settings.clip_len
    was_training = model.classifier.training
    model.classifier.eval()
    scores: list[float] = []
    with torch.no_grad():
        for first in range(0, len(items), batch_size):
            part = items[first : first + batch_size]
            clips = np.stack([gather_clips(episodes[i].frames, [end], clip_len)[0] for i, end, _ in part])
            scores += model.logits(clips).tolist()
    model.classifier.train(was_training)
    order = np.argsort(scores)[::-1][: max(1, len(items) // 4)]
    return [items[j] for j in order]


def bce_loss(model: RewardModel, clips: np.ndarray, labels: torch.Tensor,
             classifier: torch.nn.Module | None = None) -> torch.Tensor:
    """Binary cross-entropy on the single success logit (computed here: num_labels=1 would make HF use MSE).

    ``classifier``: the module to run instead of ``model.classifier``, e.g. its DDP wrapper.
    """
    return torch.nn.functional.binary_cross_entropy_with_logits(model.logits(clips, classifier),
                                                                labels.float().to(model.device))


def classification_report(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1, accuracy and counts of boolean predictions."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": f1_score(predicted, labels),
        "accuracy": (tp + tn) / max(len(labels), 1),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def split_episodes(episodes: Sequence[EpisodeFrames], val_fraction: float, seed: int) -> tuple[list, list]:
    """Split successes and failures separately by episode id (the data package's stable hash rule).

    Each label keeps at least one training episode, and gives one to validation when it has two or more.
    """
    from wmpo_core.data.dataset import split_episode_ids

    train: list[EpisodeFrames] = []
    val: list[EpisodeFrames] = []
    for label in (True, False):
        group = sorted((ep for ep in episodes if bool(ep.success) == label), key=lambda ep: ep.episode_id)
        _, val_ids = split_episode_ids([ep.episode_id for ep in group], val_fraction, seed)
        if not val_ids and len(group) >= 2:
            val_ids = [group[-1].episode_id]
        if len(val_ids) == len(group) and group:
            val_ids = val_ids[1:]
        chosen = set(val_ids)
        train += [ep for ep in group if ep.episode_id not in chosen]
        val += [ep for ep in group if ep.episode_id in chosen]
    return train, val


def train_reward(
    episodes: Sequence[EpisodeFrames],
    out: str | Path,
    config: RewardTrainConfig | None = None,
    *,
    backbone: str | Path | None = None,
    world_model: Any = None,
    imagined: Sequence[EpisodeFrames] = (),
    progress: bool = True,
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Train on labelled clips, calibrate tau on validation episodes, save to ``out``.

    ``device``: cpu, cuda, cuda:N or auto (:func:`wmpo_core.policy.training_options.training_device`);
    the classifier and every batch live there.

    With ``world_model``, the imagined replays of the training episodes (:func:`imagined_replays`,
    the real labels) are training episodes too, and ``tau`` is calibrated on the validation
    episodes and their replays together: GRPO applies the model to imagined videos, whose blur and
    artefacts the real frames never show.

    ``imagined``: replays made beforehand (ids ``<id>~imagined``, e.g. :func:`out_of_fold_replays`), each put
    in the split of its real episode (training when that episode is not among ``episodes``).

    Under ``accelerate launch`` every rank draws its own balanced batches, DDP all-reduces the
    gradients, and only the main process writes ``out``.
    """
    from torch.utils.tensorboard import SummaryWriter

    from wmpo_core.policy.training_options import make_accelerator, training_device

    cfg = config or RewardTrainConfig()
    out = Path(out)
    accelerator = make_accelerator(device)
    train_on = training_device(device, accelerator)
    main_process, rank = accelerator.is_main_process, accelerator.process_index
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    labelled = [ep for ep in episodes if ep.success is not None]
    if not labelled:
        raise ValueError("no episode has a success label; label them first (`~/label` of the recorder)")
    train, val = split_episodes(labelled, cfg.val_fraction, cfg.seed)
    notes: list[str] = []
    if len({bool(ep.success) for ep in val}) < 2:
        notes.append("validation split lacks successes or failures: tau calibrated on all labelled episodes")
        val = labelled
    settings = RewardSettings(camera=cfg.camera, image_size=cfg.image_size, clip_len=cfg.clip_len,
                              min_frame=cfg.min_frame, score_stride=cfg.score_stride, rule=cfg.rule)
    val_real = list(val)
    if world_model is not None:
        log.info("imagining replays of %d training and %d validation episodes", len(train), len(val))
        train = train + imagined_replays(world_model, train, cfg.seed, progress=progress)
        val = val + imagined_replays(world_model, val, cfg.seed + 100_000, progress=progress)
    if imagined:
        val_ids = {ep.episode_id for ep in val_real}
        for ep in imagined:
            if ep.success is None:
                continue
            (val if ep.episode_id.removesuffix("~imagined") in val_ids else train).append(ep)
    torch.manual_seed(cfg.seed)
    model = load_backbone(backbone, settings) if backbone else RewardModel.tiny(settings, **cfg.model)
    model.classifier.to(train_on).train()

    items = [(i, end, label) for i, ep in enumerate(train)
             for end, label in labelled_clip_ends(len(ep.frames), ep.success, settings.clip_len, cfg.stride,
                                                  cfg.final_clips, cfg.early_fraction, ep.success_step,
                                                  cfg.success_margin, ep.success_flags)]
    positives = [it for it in items if it[2] == 1]
    negatives = [it for it in items if it[2] == 0]
    if not positives or not negatives:
        raise ValueError(f"training clips: {len(positives)} positive and {len(negatives)} negative; need both "
                         "(at least one successful and one failed or long-enough episode)")
    # Rank 0 draws what a single process draws; the other ranks draw their own batches and crops.
    generator = torch.Generator().manual_seed(cfg.seed + rank * 1_000_003)
    aug_rng = np.random.default_rng(cfg.seed + rank * 1_000_003)
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    classifier, optimizer = accelerator.prepare(model.classifier, optimizer)
    writer = SummaryWriter(str(out / "tb")) if main_process else None
    losses: list[float] = []
    start = time.perf_counter()
    half = cfg.batch_size // 2
    n_hard = round(cfg.hard_negative_fraction * (cfg.batch_size - half))
    hard: list[tuple[int, int, int]] = []
    for step in tqdm(range(cfg.steps), desc="train-reward", disable=not (progress and main_process)):
        if n_hard and step >= cfg.mining_every and step % cfg.mining_every == 0:
            hard = mine_hard_negatives(model, negatives, train, cfg.mining_pool, generator)
        # Balanced batches: successes are rarer than failures and early clips.
        pick = [positives[j] for j in torch.randint(0, len(positives), (half,), generator=generator)]
        k_hard = n_hard if hard else 0
        pick += [hard[j] for j in torch.randint(0, len(hard), (k_hard,), generator=generator)] if k_hard else []
        pick += [negatives[j] for j in torch.randint(0, len(negatives), (cfg.batch_size - half - k_hard,),
                                                     generator=generator)]
        clips = np.stack([gather_clips(train[i].frames, [end], settings.clip_len)[0] for i, end, _ in pick])
        clips = augment_clips(clips, aug_rng, cfg.flip, cfg.shift_px)
        labels = torch.tensor([label for _, _, label in pick])
        loss = bce_loss(model, clips, labels, classifier)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(classifier.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if writer is not None:
            writer.add_scalar("reward/loss", losses[-1], step)
    elapsed = time.perf_counter() - start
    model.classifier.eval()
    scores = model.trajectory_scores([ep.frames for ep in val])
    val_labels = np.array([bool(ep.success) for ep in val])
    tau, f1 = calibrate_tau(scores, val_labels)
    model.settings.tau = tau
    n_real = len(val_real)
    by_source = {"val_f1_real": f1_score(scores[:n_real] > tau, val_labels[:n_real])}
    if len(val) > n_real:
        by_source["val_f1_imagined"] = f1_score(scores[n_real:] > tau, val_labels[n_real:])
    result = {
        "tau": tau, "val_f1": f1, **by_source, "val_episodes": len(val), "train_episodes": len(train),
        "positive_clips": len(positives), "negative_clips": len(negatives),
        "final_loss": float(np.mean(losses[-20:])), "first_loss": losses[0],
        "seconds_per_step": elapsed / max(cfg.steps, 1),
        "params_millions": sum(p.numel() for p in model.classifier.parameters()) / 1e6, "notes": notes,
    }
    if main_process:  # the losses are the main process's own (each rank's batches are its own)
        model.save_pretrained(out)
        writer.add_scalar("reward/val_f1", f1, cfg.steps)
        writer.close()
        (out / "training.json").write_text(json.dumps(
            result | {"config": asdict(cfg), "val_ids": [ep.episode_id for ep in val_real]}, indent=2) + "\n")
    accelerator.wait_for_everyone()  # no rank returns before the model is saved
    return result


def evaluate_reward(model: RewardModel, episodes: Sequence[EpisodeFrames]) -> dict[str, Any]:
    """Trajectory-level precision / recall / F1 at the model's tau on labelled episodes."""
    labelled = [ep for ep in episodes if ep.success is not None]
    if not labelled:
        raise ValueError("no labelled episode to evaluate on")
    scores = model.trajectory_scores([ep.frames for ep in labelled])
    labels = np.array([bool(ep.success) for ep in labelled])
    report = classification_report(scores > model.settings.tau, labels)
    best_tau, best_f1 = calibrate_tau(scores, labels)
    return report | {
        "auc": roc_auc(scores, labels),
        "tau": model.settings.tau, "episodes": len(labelled), "min_frame": model.settings.min_frame,
        "oracle_tau": best_tau, "oracle_f1": best_f1,
        "scores": {ep.episode_id: float(s) for ep, s in zip(labelled, scores, strict=True)},
    }


def imagined_replays(world_model: Any, episodes: Sequence[EpisodeFrames], seed: int = 0,
                     batch_size: int = 8, progress: bool = False, success_head: Any = None,
                     head_probs: list[np.ndarray] | None = None) -> list[EpisodeFrames]:
    """Each labelled episode replayed in the world model: its first real frame, then its recorded actions.

    What GRPO's reward sees (the real start frame, then imagined ones) for a known outcome. A replay
    keeps the episode's label, success step and per-frame success flags (same frame indices) and
    gets the id ``<id>~imagined``. Episode ``j`` of the list draws from seed ``seed + j``.
    With ``success_head``, the head's per-frame success probability of each replay (frame 0, the real
    start, gets 0) is appended to ``head_probs``.
    """
    from wmpo_core.world_model.imagine import ReplayPolicy, imagine

    labelled = [ep for ep in episodes if ep.success is not None and len(ep.frames) > 1]
    k = world_model.chunk_size
    out: list[EpisodeFrames] = []
    bar = tqdm(total=len(labelled), desc="imagined replays", disable=not progress)
    for first in range(0, len(labelled), batch_size):
        part = labelled[first : first + batch_size]
        horizon = max(len(ep.frames) - 1 for ep in part)
        actions = np.zeros((len(part), horizon, part[0].actions.shape[1]), dtype=np.float32)
        for i, ep in enumerate(part):  # shorter episodes are padded with zero actions past their end
            actions[i, : len(ep.actions) - 1] = ep.actions[:-1]
        starts = np.stack([ep.frames[:1] for ep in part])
        imagined = imagine(world_model, ReplayPolicy(actions, k), starts, part[0].instruction, horizon,
                           [seed + first + i for i in range(len(part))], success_head=success_head)
        c = imagined.context_frames
        for i, ep in enumerate(part):
            if success_head is not None and head_probs is not None:
                head_probs.append(np.concatenate([[0.0], imagined.success_probs[i, : len(ep.frames) - 1]]))
            frames = resize_frames(imagined.frames[i, c - 1 : c - 1 + len(ep.frames)], ep.frames.shape[1])
            out.append(EpisodeFrames(f"{ep.episode_id}~imagined", frames, ep.actions, ep.success, ep.instruction,
                                     ep.success_step, ep.success_flags))
        bar.update(len(part))
    bar.close()
    return out


def out_of_fold_replays(pairs: Sequence[tuple[str | Path, Sequence[EpisodeFrames]]], seed: int = 0,
                        device: str | None = "cpu", progress: bool = False,
                        camera: str | None = None) -> list[EpisodeFrames]:
    """Imagined replays (:func:`imagined_replays`) of each ``(world-model run, episodes)`` pair, where the world
    model never trained on those episodes (its ``episodes.json``, and its alignment source's): what GRPO's
    reward sees on start states the world model does not know. A pair whose world model trained on one of
    its episodes is refused by name.

    Cross-fitting: split the episodes in two folds, train a world model on each, and give each the other
    fold's episodes; the reward model then learns how imagination of *unseen* episodes looks for each
    outcome (replays of training episodes are sharper and more faithful than GRPO's imagination will be).
    """
    from wmpo_core.data.frames import training_episode_ids
    from wmpo_core.world_model.model import WorldModel

    out: list[EpisodeFrames] = []
    for j, (run, episodes) in enumerate(pairs):
        trained = training_episode_ids(run)
        if not trained:
            raise ValueError(f"{run}: no episodes.json; cannot tell which episodes this world model trained on")
        seen = sorted(ep.episode_id for ep in episodes if ep.episode_id in trained)
        if seen:
            raise ValueError(f"{run} trained on {len(seen)} of the episodes it is asked to imagine (e.g. {seen[0]}); "
                             "give each world model only episodes it did not train on (the other fold's)")
        world_model = WorldModel.from_pretrained(run, device=device or "cpu")
        if camera is not None and world_model.settings.camera != camera:
            raise ValueError(f"{run}: a world model of camera {world_model.settings.camera!r}; the episodes were read "
                             f"from camera {camera!r}")
        out += imagined_replays(world_model, episodes, seed + 1_000_000 * j, progress=progress)
    return out


def _scores_on_imagination(model: RewardModel, world_model: Any, episodes: Sequence[EpisodeFrames],
                           seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(episode ids, real outcomes, trajectory scores) of the imagined replays of ``episodes``."""
    replays = imagined_replays(world_model, episodes, seed)
    if not replays:
        raise ValueError("no labelled episode to imagine")
    scores = model.trajectory_scores([ep.frames for ep in replays])
    labels = np.array([bool(ep.success) for ep in replays])
    return [ep.episode_id.removesuffix("~imagined") for ep in replays], labels, scores


def evaluate_reward_on_imagination(model: RewardModel, world_model: Any, episodes: Sequence[EpisodeFrames],
                                   seed: int = 0) -> dict[str, Any]:
    """The reward model on imagined replays (:func:`imagined_replays`) against the episodes' real outcome."""
    ids, labels, scores = _scores_on_imagination(model, world_model, episodes, seed)
    predicted = scores > model.settings.tau
    return classification_report(predicted, labels) | {
        "auc": roc_auc(scores, labels),
        "tau": model.settings.tau, "episodes": len(ids), "agreement": float(np.mean(predicted == labels)),
        "scores": {i: float(x) for i, x in zip(ids, scores, strict=True)},
    }


def calibrate_on_imagination(model: RewardModel, world_model: Any, episodes: Sequence[EpisodeFrames],
                             seed: int = 0, rule: str = "f1") -> dict[str, Any]:
    """Set ``model.settings.tau`` to the threshold that maximizes ``rule`` (F1, or "balanced" accuracy:
    :func:`~wmpo_core.stats.calibrate_tau`) on imagined replays of ``episodes``.

    GRPO scores imagined video, whose score distribution differs from real video's; the threshold
    calibrated on real validation clips can call almost every imagined trajectory a failure (or a
    success). ``episodes`` must be labelled and must not be the ones the reward is evaluated on.
    Returns the replay scores and what the threshold was before and after.
    """
    ids, labels, scores = _scores_on_imagination(model, world_model, episodes, seed)
    if labels.all() or not labels.any():
        raise ValueError(f"calibration needs successes and failures; got {int(labels.sum())} of {len(labels)} "
                         "successful")
    before = model.settings.tau
    before_f1 = f1_score(scores > before, labels)
    tau, _ = calibrate_tau(scores, labels, rule)
    model.settings.tau = tau
    return {"tau": tau, "rule": rule, "f1": f1_score(scores > tau, labels), "tau_before": before,
            "f1_before": before_f1, "balanced_accuracy": balanced_accuracy(scores > tau, labels),
            "balanced_accuracy_before": balanced_accuracy(scores > before, labels), "auc": roc_auc(scores, labels),
            "episodes": len(ids), "successes": int(labels.sum()),
            "scores": {i: float(x) for i, x in zip(ids, scores, strict=True)}}
