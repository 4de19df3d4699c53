"""Where does imagination lose the task outcome? The diagnostic ladder.

The reward model scores the same labelled episodes in five forms, from real to fully imagined:

- ``a_real``: the recorded video;
- ``b_vae``: every frame through the world model's VAE (encode, decode): what the autoencoder keeps;
- ``c_chunk``: each chunk of K frames predicted from the c *real* frames before it and the recorded
  actions (one-step dynamics, no accumulated error);
- ``d_branch``: real frames up to ``branch_chunks`` chunks before the outcome, then the recorded actions
  replayed in imagination to the end (the decisive moment inside a short imagined horizon);
- ``e_replay``: the first real frame, then the whole episode imagined (what GRPO's reward sees).

The AUC of each rung (with a 95% bootstrap interval over episodes) says which stage loses the outcome:
a drop from (a) to (b) blames the VAE, from (b) to (c) the per-chunk dynamics, from (c) to (d)/(e)
accumulated error. Beside it, per-chunk PSNR / SSIM of rungs (c) and (e) over the whole frame and over
the task region (where the task's objects are, ``TaskSpec.regions``), since a frame can score well while
its few object pixels are wrong.

The outcome step of a success is its recorded ``success_step``; a failure has none, so it branches at the
median success step of the successes in the set (where a success would have shown), clamped to its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wmpo_core.data.frames import EpisodeFrames, resize_frames
from wmpo_core.reward.model import TRAJECTORY_RULES, RewardModel
from wmpo_core.reward.train import imagined_replays, roc_auc
from wmpo_core.stats import f1_score
from wmpo_core.world_model.evaluate import frame_mse, psnr, psnr_of_mse, ssim
from wmpo_core.world_model.imagine import ReplayPolicy, imagine

RUNGS = ("a_real", "b_vae", "c_chunk", "d_branch", "e_replay")
HEAD_TITLES = {
    "c_chunk": "head (c) each chunk from real context",
    "c_swapped": "head (c) context of another episode",
    "d_branch": "head (d) replay from {n} chunks before",
    "e_replay": "head (e) full replay from the first frame",
}
RUNG_TITLES = {
    "a_real": "(a) real video",
    "b_vae": "(b) VAE encode-decode",
    "c_chunk": "(c) one chunk from real context",
    "d_branch": "(d) replay from {n} chunks before the outcome",
    "e_replay": "(e) full replay from the first frame",
}


def bootstrap_auc(scores: Sequence[float], labels: Sequence[bool], resamples: int = 2000,
                  seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(AUC, 2.5th, 97.5th percentile) over ``resamples`` resamplings of the episodes with replacement.

    Successes and failures are resampled separately (their counts stay fixed), so every resample has
    both classes. None when one class is missing.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    auc = roc_auc(s, y)
    if auc is None:
        return None, None, None
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    # Pairwise wins once, then each resample is a weighted mean over the drawn pairs.
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    values = np.empty(resamples)
    for r in range(resamples):
        i = rng.integers(0, len(pos), len(pos))
        j = rng.integers(0, len(neg), len(neg))
        values[r] = wins[np.ix_(i, j)].mean()
    lo, hi = np.percentile(values, [2.5, 97.5])
    return auc, float(lo), float(hi)


def region_mask(size: int, region: Sequence[float] | None) -> tuple[slice, slice]:
    """Row and column slices of a normalized (x0, y0, x1, y1) box on a ``size`` px frame (whole frame if None)."""
    if region is None:
        return slice(0, size), slice(0, size)
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"region: expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(region)}")
    return slice(int(np.floor(y0 * size)), int(np.ceil(y1 * size))), slice(int(np.floor(x0 * size)),
                                                                           int(np.ceil(x1 * size)))


def outcome_steps(episodes: Sequence[EpisodeFrames]) -> list[int]:
    """The frame where each episode's outcome shows (module docstring)."""
    successes = [ep.success_step for ep in episodes if ep.success and ep.success_step is not None]
    median = int(np.median(successes)) if successes else None
    out = []
    for ep in episodes:
        step = ep.success_step if ep.success and ep.success_step is not None else median
        out.append(len(ep.frames) - 1 if step is None else min(int(step), len(ep.frames) - 1))
    return out


def vae_roundtrip(world_model: Any, episodes: Sequence[EpisodeFrames]) -> list[np.ndarray]:
    """Rung (b): every frame encoded and decoded by the world model's VAE."""
    import torch

    out = []
    for ep in episodes:
        frames = torch.from_numpy(ep.frames[None]).to(world_model.device)
        out.append(world_model.decode(world_model.encode(frames))[0].cpu().numpy())
    return out


def chunkwise(world_model: Any, episodes: Sequence[EpisodeFrames], seed: int = 0,
              batch_size: int = 64) -> list[np.ndarray]:
    """Rung (c): frames [0, c) real, then every chunk [t, t + K) predicted from the real frames [t - c, t).

    Action ``t - 1`` produces frame ``t``; the last chunk is cut to the episode's length.
    """
    c, k = world_model.context_frames, world_model.chunk_size
    jobs: list[tuple[int, int]] = [(e, t) for e, ep in enumerate(episodes) for t in range(c, len(ep.frames), k)]
    out = [ep.frames.copy() for ep in episodes]
    for first in range(0, len(jobs), batch_size):
        part = jobs[first : first + batch_size]
        starts = np.stack([episodes[e].frames[t - c : t] for e, t in part])
        actions = np.zeros((len(part), k, episodes[0].actions.shape[1]), dtype=np.float32)
        for i, (e, t) in enumerate(part):
            a = episodes[e].actions[t - 1 : t - 1 + k]
            actions[i, : len(a)] = a
        seeds = [seed + first + i for i in range(len(part))]
        predicted = imagine(world_model, ReplayPolicy(actions, k), starts, "", k, seeds).imagined_frames
        for i, (e, t) in enumerate(part):
            n = min(k, len(out[e]) - t)
            out[e][t : t + n] = predicted[i, :n]
    return out


def repeat_last(frames: np.ndarray, c: int, k: int) -> np.ndarray:
    """Rung (c)'s no-motion reference: frames [0, c) real, then every chunk [t, t + K) a copy of frame t - 1."""
    out = frames.copy()
    for t in range(c, len(frames), k):
        out[t : t + k] = frames[t - 1]
    return out


def branched(world_model: Any, episodes: Sequence[EpisodeFrames], branch_at: Sequence[int], seed: int = 0,
             batch_size: int = 8, success_head: Any = None,
             head_probs: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Rung (d): real frames before ``branch_at[i]``, then the recorded actions replayed in imagination to the end.

    With ``success_head``, ``head_probs`` (per episode, the head's rung-(c) probabilities: real context) get
    the head's probabilities from the branch on, read from the imagined context (changed in place).
    """
    c = world_model.context_frames
    out = [ep.frames.copy() for ep in episodes]
    order = list(range(len(episodes)))
    for first in range(0, len(order), batch_size):
        part = order[first : first + batch_size]
        bs = [max(1, min(int(branch_at[e]), len(episodes[e].frames) - 1)) for e in part]
        horizon = max(len(episodes[e].frames) - b for e, b in zip(part, bs, strict=True))
        starts = np.stack([np.concatenate([np.repeat(episodes[e].frames[:1], max(0, c - b), axis=0),
                                           episodes[e].frames[max(0, b - c) : b]]) for e, b in zip(part, bs, strict=True)])
        actions = np.zeros((len(part), horizon, episodes[part[0]].actions.shape[1]), dtype=np.float32)
        for i, (e, b) in enumerate(zip(part, bs, strict=True)):
            a = episodes[e].actions[b - 1 : len(episodes[e].frames) - 1]
            actions[i, : len(a)] = a
        seeds = [seed + first + i for i in range(len(part))]
        imagined = imagine(world_model, ReplayPolicy(actions, world_model.chunk_size), starts, "", horizon,
                           seeds, success_head=success_head)
        predicted = imagined.imagined_frames
        for i, (e, b) in enumerate(zip(part, bs, strict=True)):
            out[e][b:] = predicted[i, : len(out[e]) - b]
            if success_head is not None and head_probs is not None:
                head_probs[e][b:] = imagined.success_probs[i, : len(out[e]) - b]
    return out


@dataclass
class LadderReport:
    """AUC per rung with its bootstrap interval, mean scores by outcome, and fidelity per chunk."""

    episodes: int
    successes: int
    rungs: dict[str, dict[str, Any]]
    fidelity: dict[str, Any]
    settings: dict[str, Any]
    # The success head's rows (when one was given): rung name -> the same fields as ``rungs``.
    head: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "successes": self.successes, "rungs": self.rungs,
                "fidelity": self.fidelity, "settings": self.settings, "success_head": self.head}

    def table(self) -> str:
        """Plain-text ladder: one row per rung; then the fidelity lines."""
        n = self.settings["branch_chunks"]
        near = self.settings.get("near_failures")
        lines = [f"{self.episodes} episodes ({self.successes} successes); reward tau {self.settings['tau']:.3f}, "
                 f"trajectory rule {self.settings.get('rule', 'any')!r}",
                 f"{'rung':<48}{'AUC':>7}  {'95% CI':<15}{'mean score s/f':>16}{'F1@tau':>8}"
                 + ("  AUC vs clear/near failures" if near is not None else "") + "  AUC any/final clip"]

        def fmt(value: float | None) -> str:
            return " n/a" if value is None else f"{value:.3f}"

        for name, r in self.rungs.items():
            title = RUNG_TITLES[name].format(n=n)
            auc = "  n/a" if r["auc"] is None else f"{r['auc']:.3f}"
            ci = "" if r["auc"] is None else f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
            split = (f"  {fmt(r['auc_clear_failures'])}/{fmt(r['auc_near_failures'])}" if "auc_near_failures" in r
                     else "")
            rules = "/".join(fmt(r["auc_by_rule"][rule]["auc"]) for rule in TRAJECTORY_RULES) if "auc_by_rule" in r else ""
            lines.append(f"{title:<48}{auc:>7}  {ci:<15}{r['mean_success']:>8.3f}/{r['mean_failure']:<7.3f}"
                         f"{r['f1_at_tau']:>8.3f}{split}  {rules}")
        if self.head:
            lines.append(f"success head (tau {self.settings['head_tau']:.3f}, rule {self.settings['head_rule']!r}): "
                         "per-frame probabilities from the context latents and the chunk's actions; AUC any/final frame")
            for name, r in self.head.items():
                title = HEAD_TITLES[name].format(n=n)
                auc = "  n/a" if r["auc"] is None else f"{r['auc']:.3f}"
                ci = "" if r["auc"] is None else f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
                rules = "/".join(fmt(v["auc"]) for v in r["auc_by_rule"].values())
                lines.append(f"{title:<48}{auc:>7}  {ci:<15}{r['mean_success']:>8.3f}/{r['mean_failure']:<7.3f}"
                             f"{r['f1_at_tau']:>8.3f}  {rules}")
        if near is not None:
            lines.append(f"near failures: the {near} failed episodes the reward model scores >= 0.5 on real video; "
                         f"clear: the other {self.episodes - self.successes - near}")
        for rung, f in self.fidelity.items():
            lines.append(f"{rung} fidelity (PSNR dB / SSIM, per chunk after the context):")
            for where in ("frame", "region"):
                cells = " ".join(f"{p:5.1f}/{s:.2f}" for p, s in zip(f[where]["psnr"], f[where]["ssim"], strict=True))
                lines.append(f"  {where:<7}{cells}")
            if "in_chunk_psnr" in f:
                lines.append("  frame PSNR by position in the chunk: "
                             + " ".join(f"{p:.1f}" for p in f["in_chunk_psnr"]))
        return "\n".join(lines)


def _fidelity(videos: Sequence[np.ndarray], episodes: Sequence[EpisodeFrames], start: int, k: int,
              region: tuple[slice, slice], max_chunks: int) -> dict[str, Any]:
    """PSNR / SSIM per chunk position (frames from ``start`` on) over the whole frame and the region."""
    rows, cols = region
    out: dict[str, Any] = {}
    for where in ("frame", "region"):
        p_chunks: list[list[float]] = [[] for _ in range(max_chunks)]
        s_chunks: list[list[float]] = [[] for _ in range(max_chunks)]
        for video, ep in zip(videos, episodes, strict=True):
            for j in range(max_chunks):
                a, b = start + j * k, min(start + (j + 1) * k, len(ep.frames))
                if a >= b:
                    break
                pred, real = video[a:b], ep.frames[a:b]
                if where == "region":
                    pred, real = pred[:, rows, cols], real[:, rows, cols]
                p_chunks[j].append(float(psnr(pred, real).mean()))
                if min(pred.shape[1:3]) >= 11:  # the SSIM window is 11 px
                    s_chunks[j].append(float(ssim(np.ascontiguousarray(pred), np.ascontiguousarray(real)).mean()))
        used = [j for j in range(max_chunks) if p_chunks[j]]
        out[where] = {"psnr": [float(np.mean(p_chunks[j])) for j in used],
                      "ssim": [float(np.mean(s_chunks[j])) if s_chunks[j] else float("nan") for j in used],
                      "episodes": [len(p_chunks[j]) for j in used]}
    return out


def run_ladder(world_model: Any, reward: RewardModel, episodes: Sequence[EpisodeFrames], *,
               branch_chunks: int = 2, region: Sequence[float] | None = None, seed: int = 0,
               resamples: int = 2000, rungs: Sequence[str] = RUNGS, progress: Any = None,
               success_head: Any = None, head_tau: float = 0.5, head_rule: str = "final") -> LadderReport:
    """Score ``episodes`` (labelled, at the world model's frame size) on every rung of the ladder.

    With ``success_head``, the head is scored on rungs (c), (d) and (e) from the same imagined trajectories,
    and on rung (c) with every episode's context taken from the next episode (does it read the scene?).
    """
    labelled = [ep for ep in episodes if ep.success is not None and len(ep.frames) > world_model.context_frames]
    if not labelled:
        raise ValueError("no labelled episode longer than the world model's context")
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        raise ValueError(f"rungs: unknown {unknown}; expected names from {list(RUNGS)}")
    if branch_chunks < 1:
        raise ValueError(f"branch_chunks: expected >= 1, got {branch_chunks}")
    labels = np.array([bool(ep.success) for ep in labelled])
    k, c = world_model.chunk_size, world_model.context_frames
    size = labelled[0].frames.shape[1]
    box = region_mask(size, region)
    say = progress or (lambda message: None)
    videos: dict[str, list[np.ndarray]] = {}
    branch_at = [max(c, o - branch_chunks * k) for o in outcome_steps(labelled)]
    head_probs: dict[str, list[np.ndarray]] = {}
    if success_head is not None:
        from wmpo_core.world_model.success_head import window_probabilities

        say("success head on real context")
        head_probs["c_chunk"] = window_probabilities(success_head, world_model, labelled)
        head_probs["c_swapped"] = window_probabilities(success_head, world_model, labelled,
                                                       context_from=labelled[1:] + labelled[:1])
    for name in rungs:
        say(f"rung {name}")
        if name == "a_real":
            videos[name] = [ep.frames for ep in labelled]
        elif name == "b_vae":
            videos[name] = vae_roundtrip(world_model, labelled)
        elif name == "c_chunk":
            videos[name] = chunkwise(world_model, labelled, seed)
        elif name == "d_branch":
            if success_head is not None:
                head_probs[name] = [p.copy() for p in head_probs["c_chunk"]]
            videos[name] = branched(world_model, labelled, branch_at, seed, success_head=success_head,
                                    head_probs=head_probs.get(name))
        else:
            if success_head is not None:
                head_probs[name] = []
            replays = imagined_replays(world_model, labelled, seed, success_head=success_head,
                                       head_probs=head_probs.get(name))
            videos[name] = [r.frames for r in replays]
    reward_size = reward.settings.image_size
    result: dict[str, dict[str, Any]] = {}
    for name, vids in videos.items():
        say(f"scoring {name}")
        clips = [reward.clip_scores(resize_frames(v, reward_size)) for v in vids]
        # Both trajectory rules from the same clip scores; the reward model's own rule decides tau, F1 and "auc".
        rule_scores = {rule: np.array([reward.score_clips(ends, sc, rule) for ends, sc in clips])
                       for rule in TRAJECTORY_RULES}
        result[name] = _scored_row(rule_scores, reward.settings.rule, reward.settings.tau, labelled, labels,
                                   resamples, seed)
    if "a_real" in result:
        # Failures the reward model itself scores near success on real video (>= 0.5: e.g. a cube lifted
        # almost far enough) are the hardest to keep apart in imagination; the AUC is split by them.
        real = np.array([result["a_real"]["scores"][ep.episode_id] for ep in labelled])
        near = ~labels & (real >= 0.5)
        for r in result.values():
            scores = np.array([r["scores"][ep.episode_id] for ep in labelled])
            for key, failures in (("auc_clear_failures", ~labels & ~near), ("auc_near_failures", near)):
                keep = labels | failures
                r[key] = roc_auc(scores[keep], labels[keep])
        near_count = int(near.sum())
    else:
        near_count = None
    head_rows = {name: _head_row(probs, labelled, labels, head_tau, head_rule, resamples, seed)
                 for name, probs in head_probs.items()}
    fidelity: dict[str, Any] = {}
    longest = max(len(ep.frames) for ep in labelled)
    if "c_chunk" in videos:
        # Every chunk of (c) is one step from real context: pool them as one number per episode.
        fidelity["c_chunk"] = _pooled_fidelity(videos["c_chunk"], labelled, c, box, k)
        # The reference a dynamics model must beat: every chunk repeats the last real context frame.
        fidelity["c_repeat_last"] = _pooled_fidelity([repeat_last(ep.frames, c, k) for ep in labelled], labelled, c,
                                                     box, k)
    if "e_replay" in videos:
        fidelity["e_replay"] = _fidelity(videos["e_replay"], labelled, 1, k, box, (longest - 1 + k - 1) // k)
    settings = {"branch_chunks": branch_chunks, "region": list(region) if region is not None else None,
                "seed": seed, "resamples": resamples, "tau": float(reward.settings.tau), "rule": reward.settings.rule,
                "chunk_size": k,
                "context_frames": c, "image_size": size, "near_failures": near_count,
                "branch_at": dict(zip([ep.episode_id for ep in labelled], branch_at, strict=True)),
                "head_tau": float(head_tau), "head_rule": head_rule}
    return LadderReport(len(labelled), int(labels.sum()), result, fidelity, settings, head_rows)


def _scored_row(scores_by_rule: dict[str, np.ndarray], rule: str, tau: float, episodes: Sequence[EpisodeFrames],
                labels: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """One ladder row from trajectory scores under each rule: the AUC of each (bootstrap interval); the row's
    own AUC, mean score by outcome, F1 at ``tau`` and per-episode scores follow ``rule``."""
    by_rule = {}
    for each, values in scores_by_rule.items():
        auc, lo, hi = bootstrap_auc(values, labels, resamples, seed)
        by_rule[each] = {"auc": auc, "ci": [lo, hi]}
    scores = scores_by_rule[rule]
    return {"auc": by_rule[rule]["auc"], "ci": by_rule[rule]["ci"], "auc_by_rule": by_rule,
            "f1_at_tau": float(f1_score(scores > tau, labels)),
            "mean_success": float(scores[labels].mean()) if labels.any() else float("nan"),
            "mean_failure": float(scores[~labels].mean()) if (~labels).any() else float("nan"),
            "scores": {ep.episode_id: float(v) for ep, v in zip(episodes, scores, strict=True)}}


def _head_row(probs: Sequence[np.ndarray], episodes: Sequence[EpisodeFrames], labels: np.ndarray, tau: float,
              rule: str, resamples: int, seed: int) -> dict[str, Any]:
    """:func:`_scored_row` of the head's per-frame probabilities under both of its rules."""
    from wmpo_core.world_model.success_head import HEAD_RULES, trajectory_score

    scores = {each: np.array([trajectory_score(p, each) for p in probs]) for each in HEAD_RULES}
    return _scored_row(scores, rule, tau, episodes, labels, resamples, seed)


def _pooled_fidelity(videos: Sequence[np.ndarray], episodes: Sequence[EpisodeFrames], start: int,
                     region: tuple[slice, slice], chunk_size: int = 0) -> dict[str, Any]:
    """PSNR of each episode's mean squared error over every predicted frame (from ``start``), averaged over
    episodes, and mean SSIM; whole frame and region, one 'chunk' each. With ``chunk_size``, also the PSNR of
    the pooled error by position inside the chunk (``in_chunk_psnr``).

    PSNR is taken of pooled errors, not averaged per frame: a frame identical to the real one has no finite
    PSNR (capped at 100 dB), and averaging those caps would flatter a predictor that copies still frames.
    """
    rows, cols = region
    out: dict[str, Any] = {}
    frame_errors: list[np.ndarray] = []  # per episode, per predicted frame: reused by position in the chunk
    for where in ("frame", "region"):
        ps, ss = [], []
        for video, ep in zip(videos, episodes, strict=True):
            pred, real = video[start:], ep.frames[start:]
            if where == "region":
                pred, real = pred[:, rows, cols], real[:, rows, cols]
            errors = frame_mse(pred, real)
            if where == "frame":
                frame_errors.append(errors)
            ps.append(float(psnr_of_mse(errors.mean())))
            if min(pred.shape[1:3]) >= 11:
                ss.append(float(ssim(np.ascontiguousarray(pred), np.ascontiguousarray(real)).mean()))
        out[where] = {"psnr": [float(np.mean(ps))], "ssim": [float(np.mean(ss)) if ss else float("nan")],
                      "episodes": [len(ps)]}
    if chunk_size:
        by_position = [np.concatenate([e[j::chunk_size] for e in frame_errors]) for j in range(chunk_size)]
        out["in_chunk_psnr"] = [float(psnr_of_mse(e.mean())) for e in by_position if e.size]
    return out
