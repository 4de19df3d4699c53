"""Behavior cloning of the VLA policy from recorded episodes.

Cross-entropy on the discrete action tokens (the configured decoding mode, parallel by
default), AdamW with linear warm-up, gradient clipping, TensorBoard logs, periodic
checkpoints that contain no pickle (weights and optimizer tensors in safetensors,
scalars and RNG bookkeeping in JSON), exact resume, and data parallelism through
`accelerate`: ``accelerate launch --multi_gpu --num_processes 2 -m wmpo_core.cli train-policy ...``
runs DDP over gloo on a CPU-only machine too (``--cpu`` would start a single process).

Data order is a function of (seed, step) only: each epoch is a seeded permutation and
rank ``r`` takes its slice of every global batch, so a resumed or re-sharded run sees
the same samples in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wmpo_core.data.dataset import EpisodeDataset, list_episode_dirs, split_episode_ids
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import VLABatch, VLAPolicy
from wmpo_core.policy.text_tokenizer import build_text_tokenizer

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
RNG_TENSORS = "rng.safetensors"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Behavior-cloning hyper-parameters (defaults: the embedded tiny run on CPU)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    save_every: int = 250
    log_every: int = 10
    val_fraction: float = 0.1
    val_batches: int = 4
    seed: int = 0
    cache_size: int = 16
    only_success: bool = True  # clone successful demonstrations only
    keep_checkpoints: int = 2
    torch_threads: int = 0  # 0 = torch's default; 1 is fastest on a CPU shared with other jobs
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decays to min_lr_ratio x lr)
    min_lr_ratio: float = 0.1
    schedule_steps: int = 0  # length of the lr schedule (0 = steps); larger stops early on a longer schedule's path
    augment_shift: int = 0  # random-shift augmentation: pixels of replicate padding, then a random crop back
    micro_batch: int = 0  # samples per forward pass, gradients accumulated (the step is unchanged); 0 = whole batch
    grad_checkpointing: bool = False  # recompute the transformers backbones' activations in the backward pass
    fsdp: bool = False  # shard weights, gradients and optimizer state over the processes (wmpo_core.policy.fsdp)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on the language model only (wmpo_core.policy.lora)
    dtype: str = "auto"  # weights dtype while training: auto (as stored / float32 for a fresh model), float32, ...

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train config.lr_schedule: expected one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.schedule_steps < 0:
            raise ValueError(f"train config.schedule_steps: expected >= 0, got {self.schedule_steps}")
        if self.augment_shift < 0:
            raise ValueError(f"train config.augment_shift: expected >= 0, got {self.augment_shift}")
        from wmpo_core.policy.placement import DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"train config.dtype: expected one of {DTYPES}, got {self.dtype!r}")
        if self.fsdp and self.lora_rank:
            raise ValueError("train config: fsdp and lora_rank together are not supported (LoRA's trainable "
                             "weights and optimizer state are small: train the adapters with DDP)")

    @classmethod
    def from_dict(cls, d: dict, where: str = "train config") -> TrainConfig:
        """Build from a dict; unknown fields, wrong types and out-of-range values are an error naming them."""
        from wmpo_core.config_io import check_config

        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}")
        try:
            config = cls(**d)
        except TypeError as exc:  # __post_init__ comparing a value of the wrong type
            raise ValueError(f"{where}: {exc}") from None
        check_config(config, where)
        return config


# --------------------------------------------------------------------------- batches


def collate(samples: Sequence[dict[str, Any]], policy: VLAPolicy) -> tuple[VLABatch, torch.Tensor, torch.Tensor]:
    """Dataset samples -> (model batch, action token ids (B, K*D), loss mask (B, K*D))."""
    proprio = np.stack([s["proprio"] for s in samples]) if policy.config.proprio_dim > 0 else None
    batch = policy.prepare_batch([s["images"] for s in samples], [s["instruction"] for s in samples], proprio)
    actions = np.stack([s["actions"] for s in samples])
    tokens = torch.from_numpy(policy.action_tokenizer.encode(actions).reshape(len(samples), -1)).to(policy.device)
    mask = np.repeat(np.stack([s["action_mask"] for s in samples]), policy.config.action_dim, axis=1)
    return batch, tokens, torch.from_numpy(mask).to(policy.device)


def bc_loss(model: torch.nn.Module, batch: VLABatch, tokens: torch.Tensor, mask: torch.Tensor,
            global_tokens: float | None = None, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy summed over this rank's valid tokens, divided by the valid tokens of the
    whole global batch and multiplied by ``world_size``, so DDP's gradient average equals the
    single-process gradient of the global batch exactly. Returns (loss, accuracy)."""
    out = model(batch, tokens, mask)
    logits = out["logits"]
    target = tokens - _token_begin(model)
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    weight = mask.flatten().to(ce.dtype)
    denominator = weight.sum() if global_tokens is None else torch.as_tensor(global_tokens, dtype=ce.dtype)
    loss = (ce * weight).sum() / denominator.clamp(min=1.0) * (1 if global_tokens is None else world_size)
    return loss, out["accuracy"]


def learning_rate(tc: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine decay."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    horizon = tc.schedule_steps or tc.steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, horizon - tc.warmup_steps))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def random_shift(pixels: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style random shift of (B, n_cam, 3, H, W) images by up to ``pad`` pixels (each image its own shift)."""
    if pad <= 0:
        return pixels
    b, n, c, h, w = pixels.shape
    flat = torch.nn.functional.pad(pixels.reshape(b * n, c, h, w), (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b * n), generator=generator).tolist()
    crops = [flat[i, :, y : y + h, x : x + w] for i, (x, y) in enumerate(zip(dx, dy, strict=True))]
    return torch.stack(crops).reshape(b, n, c, h, w)


def _token_begin(model: torch.nn.Module) -> int:
    inner = model.module if hasattr(model, "module") else model
    return inner.action_tokenizer.token_begin


def batch_indices(n: int, global_batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Sample indices of ``rank`` for optimizer step ``step`` (0-based): a pure function of its arguments."""
    if global_batch % world:
        raise ValueError(f"batch size {global_batch} must be divisible by the number of processes {world}")
    per_epoch = n // global_batch if n >= global_batch else 1
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if n < global_batch:  # tiny datasets: repeat the permutation to fill the batch
        perm = (perm * math.ceil(global_batch / n))[:global_batch]
    start = k * global_batch + rank * (global_batch // world)
    return perm[start : start + global_batch // world]


# --------------------------------------------------------------------------- checkpoints


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Optimizer state without pickle: tensors to safetensors, everything else to JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Inverse of :func:`save_optimizer`."""
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class RunExistsError(ValueError):
    """The run directory holds an earlier run that neither --resume nor --overwrite was given for."""


def earlier_run_outputs(run_dir: Path) -> list[Path]:
    """What a training run writes and a new one would replace: complete checkpoints and final packages."""
    run_dir = Path(run_dir)
    found = sorted(p for p in (run_dir / CHECKPOINTS_DIR).glob("step_*") if (p / TRAINER_STATE).is_file())
    return found + sorted(p for p in run_dir.glob("package_step*") if p.is_dir())


def _checkpoint_run_id(path: Path) -> str | None:
    try:
        value = json.loads((path / TRAINER_STATE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def save_checkpoint(run_dir: Path, policy: VLAPolicy, optimizer: torch.optim.Optimizer, step: int,
                    extra: dict[str, Any], keep: int = 2, write_optimizer: Any = None) -> Path:
    """Write ``checkpoints/step_<N>`` atomically (temporary directory, then rename); prune old ones.

    ``write_optimizer(directory)`` writes the optimizer state instead of :func:`save_optimizer`
    (an FSDP run's gathered state).

    Pruning removes only checkpoints of this run (the same ``extra["run_id"]``): another
    run's checkpoints in the same folder, or ones without a run id, are never touched.
    """
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    policy.save_pretrained(tmp, merge_adapters=False)  # LoRA: base and adapters apart, to resume exactly
    if write_optimizer is not None:
        write_optimizer(tmp)
    else:
        save_optimizer(optimizer, tmp)
    save_file({"torch": torch.get_rng_state()}, str(tmp / RNG_TENSORS))
    (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    run_id = extra.get("run_id")
    ours = sorted(p for p in root.glob("step_*") if p.is_dir() and run_id is not None and _checkpoint_run_id(p) == run_id)
    for old in ours[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (complete = has its trainer state)."""
    found = sorted(p for p in (run_dir / CHECKPOINTS_DIR).glob("step_*") if (p / TRAINER_STATE).is_file())
    return found[-1] if found else None


# --------------------------------------------------------------------------- training


def _add_adapters(policy: VLAPolicy, rank: int, checkpoint: Path | None) -> None:
    """LoRA adapters of ``rank`` on ``policy`` (the rest frozen), with a checkpoint's adapters when resuming."""
    from wmpo_core.policy.lora import LoRASettings, apply_lora, load_lora_state_dict
    from wmpo_core.policy.modeling_vla import ADAPTERS_NAME

    try:
        apply_lora(policy, LoRASettings(rank=rank))
    except ImportError as exc:
        raise ValueError(f"--lora-rank: {exc}") from None
    if checkpoint is not None:
        path = checkpoint / ADAPTERS_NAME
        if not path.is_file():
            raise ValueError(f"{path}: missing (the checkpoint was written by a run without LoRA)")
        tensors = {k: v.to(policy.device) for k, v in load_file(str(path)).items()}
        load_lora_state_dict(policy, tensors, where=str(path))


def _make_policy(config: VLAConfig, dataset: EpisodeDataset) -> VLAPolicy:
    """A fresh policy whose tokenizer knows the instructions and whose stats come from the training split."""
    instructions = sorted({e.instruction for e in dataset.episodes})
    tokenizer = build_text_tokenizer(instructions, vocab_size=config.text_vocab_size)
    stats = dataset.compute_norm_stats(config.unnorm_key)
    return VLAPolicy(config, tokenizer, stats)


def train_policy(
    episodes_dir: str | Path,
    run_dir: str | Path,
    policy_config: VLAConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    parent: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    init: str | Path | None = None,
    device: str = "cpu",
) -> Path | None:
    """Train (or resume) behavior cloning; returns the final package path (on the main process).

    A run directory holding an earlier run's checkpoints or packages is refused
    (RunExistsError) unless ``resume`` continues it or ``overwrite`` replaces it (its
    checkpoints and packages are removed first; nothing else in the folder is touched).

    ``init``: fine-tune a policy package (e.g. from `wmpo import-openvla`, verified on load) instead of a
    fresh model: its config, tokenizer, norm stats (the episodes' actions are normalized with them) and
    weights in their dtype are kept; ``policy_config`` is ignored and the package becomes the parent.

    ``device``: ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` (wmpo_core.policy.training_options); with
    ``tc.micro_batch`` each step runs that many samples at a time and accumulates the gradients.

    ``tc.lora_rank`` > 0: only LoRA adapters on the language model train (the rest frozen in ``tc.dtype``);
    checkpoints keep the base and the adapters apart and resume exactly; the package holds merged weights.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    from wmpo_core.policy.training_options import (
        enable_gradient_checkpointing,
        make_accelerator,
        micro_slices,
        training_device,
    )
    from wmpo_core.registry.package import save_package, summarize_training_data

    tc = train_config or TrainConfig()
    if tc.torch_threads > 0:
        torch.set_num_threads(tc.torch_threads)
    run = Path(run_dir)
    earlier = earlier_run_outputs(run)
    if earlier and not resume:
        if not overwrite:
            names = ", ".join(str(p.relative_to(run)) for p in earlier[:3]) + (" ..." if len(earlier) > 3 else "")
            raise RunExistsError(f"{run}: holds an earlier run ({names}); continue it with --resume or replace it "
                                 f"with --overwrite")
        for path in earlier:  # the user asked: the earlier run's checkpoints and packages go, nothing else
            shutil.rmtree(path, ignore_errors=True)
    checkpoint = latest_checkpoint(run) if resume else None
    # marks this run's checkpoints (a resumed run keeps its id): pruning touches no other run's
    run_id = (_checkpoint_run_id(checkpoint) if checkpoint is not None else None) or os.urandom(6).hex()
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint under %s, starting from scratch", run / CHECKPOINTS_DIR)
    initial = None
    if checkpoint is not None:
        policy_config = VLAConfig.load(checkpoint / "config.json")
    elif init is not None:
        from wmpo_core.policy.loading import load_policy

        initial = load_policy(init)
        policy_config = initial.config
        parent = parent or initial.version
    config = policy_config or VLAConfig()
    # AR decoding leaves the action slots unused, parallel leaves nothing unused; DDP must know.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.decoding != "parallel")
    accelerator = make_accelerator(device, kwargs_handlers=[ddp], log_with=None)
    torch.manual_seed(tc.seed)

    all_ids = [d.name for d in list_episode_dirs(episodes_dir)]
    train_ids, val_ids = split_episode_ids(all_ids, tc.val_fraction, tc.seed)
    if checkpoint is not None:  # a resumed run keeps its split even if episodes were added meanwhile
        saved = json.loads((checkpoint / TRAINER_STATE).read_text())
        train_ids, val_ids = saved.get("train_episodes", train_ids), saved.get("val_episodes", val_ids)
    dataset = EpisodeDataset(episodes_dir, chunk_size=config.chunk_size, cameras=config.cameras, episode_ids=train_ids,
                             unnorm_key=config.unnorm_key, cache_size=tc.cache_size, only_success=tc.only_success)
    if len(dataset) == 0:
        raise ValueError(f"{episodes_dir}: no usable training episode (of {len(all_ids)}; "
                         f"only_success={tc.only_success}, skipped {len(dataset.skipped)})")
    if checkpoint is not None:
        policy = VLAPolicy.from_pretrained(checkpoint)  # a LoRA run's checkpoint: the frozen base
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        start_step = int(state["step"])
        if int(state.get("lora_rank", 0)) != tc.lora_rank:
            raise ValueError(f"{checkpoint}: written with lora_rank {state.get('lora_rank', 0)}; resume it with "
                             f"--lora-rank {state.get('lora_rank', 0)} (got {tc.lora_rank})")
    elif initial is not None:
        policy, state, start_step = initial.train(), {}, 0
    else:
        policy = _make_policy(config, dataset)
        state, start_step = {}, 0
    dataset.norm_stats = policy.norm_stats
    from wmpo_core.policy.placement import place_policy

    place_policy(policy, str(training_device(device, accelerator)), tc.dtype)
    if tc.lora_rank:
        _add_adapters(policy, tc.lora_rank, checkpoint)
    if tc.grad_checkpointing:
        enable_gradient_checkpointing(policy)
    val = None
    if val_ids:
        val = EpisodeDataset(episodes_dir, chunk_size=config.chunk_size, cameras=config.cameras, episode_ids=val_ids,
                             norm_stats=policy.norm_stats, unnorm_key=config.unnorm_key, cache_size=4,
                             only_success=tc.only_success)

    if tc.fsdp:  # sharded before the optimizer is made, so that it holds only this process's shards
        from wmpo_core.policy import fsdp

        fsdp.check_setup(accelerator.num_processes)
        model = fsdp.shard_policy(policy)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        if checkpoint is not None:
            fsdp.load_full_optimizer(policy, optimizer, checkpoint)
    else:
        # with LoRA only the adapters are trainable: the optimizer holds state for them alone
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
        if checkpoint is not None:
            load_optimizer(optimizer, checkpoint)
    if checkpoint is not None:
        torch.set_rng_state(load_file(str(checkpoint / RNG_TENSORS))["torch"])
    if not tc.fsdp:
        model, optimizer = accelerator.prepare(policy, optimizer)
    inner: VLAPolicy = policy if tc.fsdp else accelerator.unwrap_model(model)
    world, rank = accelerator.num_processes, accelerator.process_index
    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        run.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(run / "tensorboard"))
        (run / "train_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=2))
        from wmpo_core.policy.lora import trainable_parameters

        log.info("training %d of %d params on %d samples from %d episodes (%d skipped), %d process(es)",
                 trainable_parameters(inner), inner.num_parameters(), len(dataset), len(dataset.episodes),
                 len(dataset.skipped), world)

    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="train-policy", dynamic_ncols=True)
    model.train()
    t_last = time.perf_counter()
    for step in range(start_step, tc.steps):
        lr = learning_rate(tc, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = batch_indices(len(dataset), tc.batch_size, step, tc.seed, rank, world)
        batch, tokens, mask = collate([dataset[i] for i in idx], inner)
        if tc.augment_shift:  # seeded by (seed, step, rank) so a resumed run sees the same crops
            gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + step) * 64 + rank)
            batch.pixel_values = random_shift(batch.pixel_values, tc.augment_shift, gen)
        global_tokens = accelerator.reduce(mask.sum().float(), reduction="sum").item()
        optimizer.zero_grad(set_to_none=True)
        # each part's loss is already divided by the whole global batch's tokens: the parts' gradients add up
        loss, correct = torch.zeros((), device=mask.device), torch.zeros((), device=mask.device)
        parts = list(micro_slices(len(idx), tc.micro_batch))
        for i, rows in enumerate(parts):
            # DDP all-reduces the gradients once, after the last part
            with accelerator.no_sync(model) if i < len(parts) - 1 else contextlib.nullcontext():
                part_loss, part_accuracy = bc_loss(model, batch.index(rows), tokens[rows], mask[rows], global_tokens,
                                                   world)
                accelerator.backward(part_loss)
            loss = loss + part_loss.detach()
            correct = correct + part_accuracy.detach() * mask[rows].sum()
        accuracy = correct / mask.sum().clamp(min=1)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        optimizer.step()
        done = step + 1
        if writer is not None and (done % tc.log_every == 0 or done == tc.steps):
            now = time.perf_counter()
            writer.add_scalar("train/loss", loss.item() / world, done)
            writer.add_scalar("train/token_accuracy", accuracy.item(), done)
            writer.add_scalar("train/grad_norm", float(grad_norm), done)
            writer.add_scalar("train/lr", lr, done)
            writer.add_scalar("train/seconds_per_step", (now - t_last) / tc.log_every, done)
            t_last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item() / world:.3f}", acc=f"{accuracy.item():.2f}")
        if done % tc.save_every == 0 or done == tc.steps:
            metrics = evaluate_bc(inner, val, tc) if val is not None and len(val) else {}
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"val/{k}", v, done)
            accelerator.wait_for_everyone()
            inner.version = re.sub(r"[^A-Za-z0-9._+-]", "-", f"{run.name}-step{done:07d}")
            # FSDP: every process takes part in gathering the full weights and optimizer state
            saved = fsdp.gathered_policy(inner) if tc.fsdp else inner
            write_optimizer = None
            if tc.fsdp:
                full_optimizer = fsdp.save_full_optimizer

                def write_optimizer(directory, full_optimizer=full_optimizer):
                    full_optimizer(inner, optimizer, directory)
            if accelerator.is_main_process:
                save_checkpoint(run, saved, optimizer, done, {"train_episodes": train_ids, "val_episodes": val_ids,
                                                               "val": metrics, "seed": tc.seed, "run_id": run_id,
                                                               "lora_rank": tc.lora_rank},
                                tc.keep_checkpoints, write_optimizer)
            elif tc.fsdp:
                fsdp.save_full_optimizer(inner, optimizer, None)
            accelerator.wait_for_everyone()
    bar.close()
    package = None
    final = fsdp.gathered_policy(inner) if tc.fsdp else inner
    if accelerator.is_main_process:
        if writer is not None:
            writer.close()
        package = run / f"package_step{tc.steps:07d}"
        if package.exists():
            shutil.rmtree(package)  # a package of this very step is re-made from the same weights
        save_package(final, package, parent=parent,
                     data=summarize_training_data(dataset.episode_ids, steps=tc.steps, source=str(episodes_dir),
                                                  skipped=dataset.skipped_summary()))
    accelerator.wait_for_everyone()
    return package


@torch.no_grad()
def evaluate_bc(policy: VLAPolicy, dataset: EpisodeDataset | None, tc: TrainConfig) -> dict[str, float]:
    """Validation loss and token accuracy over a few fixed batches."""
    if dataset is None or len(dataset) == 0:
        return {}
    was = policy.training
    policy.eval()
    losses, accs = [], []
    for b in range(tc.val_batches):
        idx = batch_indices(len(dataset), min(tc.batch_size, len(dataset)), b, seed=12345)
        batch, tokens, mask = collate([dataset[i] for i in idx], policy)
        loss, acc = bc_loss(policy, batch, tokens, mask)
        losses.append(loss.item())
        accs.append(acc.item())
    policy.train(was)
    return {"loss": float(np.mean(losses)), "token_accuracy": float(np.mean(accs))}


def iterate_batches(dataset: EpisodeDataset, policy: VLAPolicy, batch_size: int, seed: int = 0
                    ) -> Iterator[tuple[VLABatch, torch.Tensor, torch.Tensor]]:
    """Endless deterministic batches (single process), for callers that train outside :func:`train_policy`."""
    step = 0
    while True:
        yield collate([dataset[i] for i in batch_indices(len(dataset), batch_size, step, seed)], policy)
        step += 1
