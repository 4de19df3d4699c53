"""Training memory of full fine-tuning against LoRA on the same bf16 VLA policy, side by side.

Builds one miniature VLA policy (the test suite's small VLA with a larger Llama: ``--hidden``,
``--layers``; random weights from ``--seed``), casts it to bf16 as ``--dtype bfloat16`` does, and
runs one real GRPO step (``grpo_update``: a rollout's tokens sampled in eval mode, then the
clipped objective's forward, backward and AdamW step in train mode) twice, each in a fresh
process: once training every weight, once with LoRA adapters of rank ``--rank`` on the Llama
(``apply_lora``, as ``--lora-rank``). For each it reports the trainable parameters, the tensor
bytes of the gradients, the AdamW state after the step, and the step's peak RSS above the RSS
before it (VmHWM reset through /proc/self/clear_refs; Linux only), then the ratios full / LoRA.
Both processes build the same weights (their digests are compared).

    python bench/bench_lora_memory.py [--hidden 1024] [--layers 8] [--rank 8] [--batch 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test helpers

from policy_packages import INSTRUCTION, SMALL_VLA  # noqa: E402  (the small VLA the tests train)

MODES = ("full", "lora")
# what is compared between the two modes (ratio = full / LoRA)
COMPARED = ("trainable_params", "grad_bytes", "optimizer_state_bytes", "step_peak_rss_mb")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> bool:
    """Make the peak RSS (VmHWM) the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(mode: str, args: argparse.Namespace) -> dict[str, object]:
    """One GRPO step of the bf16 policy, every weight trained (``full``) or LoRA adapters only (``lora``)."""
    import gc
    import hashlib
    import time

    import numpy as np
    import torch

    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.lora import LoRASettings, apply_lora, lora_state_dict, trainable_parameters
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.rl.grpo import GRPOBatch, GRPOConfig, grpo_update
    from wmpo_core.rl.trainer_imagination import GRPOPolicy, PolicyLogProbs

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = VLAConfig(**{**SMALL_VLA, "hidden_size": args.hidden, "num_layers": args.layers,
                          "num_heads": max(1, args.hidden // 64), "num_kv_heads": max(1, args.hidden // 64),
                          "intermediate_size": args.intermediate or round(args.hidden * 2.6875)})
    policy = place_policy(VLAPolicy(config), "cpu", "bfloat16")
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode() + tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    params_total_base = policy.num_parameters()
    print(f"[{mode}] policy {params_total_base / 1e6:.2f} M params (bf16), hidden {args.hidden}, "
          f"layers {args.layers}", file=sys.stderr)
    adapter_params = 0
    if mode == "lora":
        apply_lora(policy, LoRASettings(rank=args.rank))
        adapter_params = sum(t.numel() for t in lora_state_dict(policy).values())
    trainable = [p for p in policy.parameters() if p.requires_grad]

    rng = np.random.default_rng(args.seed)
    images = [{"agentview": rng.integers(0, 256, (config.image_size, config.image_size, 3), dtype=np.uint8)}
              for _ in range(args.batch)]
    batch = policy.prepare_batch(images, [INSTRUCTION] * args.batch)
    grpo = GRPOConfig(learning_rate=1e-4, minibatch_size=args.batch, temperature=1.0)
    policy.eval()  # rollout
    tokens, logp_old = policy.sample(batch, temperature=grpo.temperature,
                                     generator=torch.Generator().manual_seed(args.seed))
    advantages = torch.tensor([1.0, -1.0] * (args.batch // 2) + [1.0] * (args.batch % 2))
    grpo_batch = GRPOBatch(batch, tokens, logp_old, advantages, torch.ones_like(logp_old))
    optimizer = torch.optim.AdamW(trainable, lr=grpo.learning_rate)
    policy.train()  # update
    gc.collect()
    rss_peak_known = _reset_peak_rss()
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    stats = grpo_update(GRPOPolicy(PolicyLogProbs(policy)), optimizer, grpo_batch, grpo)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") - rss_before if rss_peak_known else None
    print(f"[{mode}] one GRPO step in {seconds:.2f} s (gradient norm {stats['grad_norm']:.3g})", file=sys.stderr)

    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "weights_sha256": digest.hexdigest(),
        "params_total": policy.num_parameters(),
        "trainable_params": trainable_parameters(policy),
        "trainable_tensors": len(trainable),
        "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable}),
        "adapter_params": adapter_params,
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "grad_bytes": sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None),
        "params_without_grad": sum(p.numel() for p in trainable if p.grad is None),
        "optimizer_state_bytes": sum(t.numel() * t.element_size() for t in state),
        "step_peak_rss_mb": peak,
        "step_seconds": seconds,
        "grad_norm": stats["grad_norm"],
    }


def _settings(args: argparse.Namespace) -> dict[str, int]:
    """The options that define the measured step (everything but where the output goes)."""
    return {k: v for k, v in vars(args).items() if k not in ("json", "measure")}


def _settings_argv(args: argparse.Namespace) -> list[str]:
    return [word for k, v in _settings(args).items() for word in (f"--{k}", str(v))]


def _ratio(full: object, lora: object) -> float | None:
    if not isinstance(full, (int, float)) or not isinstance(lora, (int, float)) or lora <= 0:
        return None
    return full / lora


def _bytes(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024, help="Llama hidden size (heads of 64)")
    parser.add_argument("--layers", type=int, default=8, help="Llama decoder layers")
    parser.add_argument("--intermediate", type=int, default=0, help="Llama MLP width (0: 2.6875 x hidden, as Llama-2)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--batch", type=int, default=4, help="observations (one action chunk each) in the step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)  # the per-mode child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    rows = {}
    for mode in MODES:
        print(f"measuring {mode} in a fresh process ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, __file__, *_settings_argv(args), "--measure", mode],
                              stdout=subprocess.PIPE, text=True)  # progress (stderr) passes through
        if proc.returncode != 0:
            raise SystemExit(f"bench_lora_memory: the {mode} run failed (exit {proc.returncode})")
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, lora = rows["full"], rows["lora"]
    if full["weights_sha256"] != lora["weights_sha256"]:
        raise SystemExit("bench_lora_memory: the two runs built different weights")
    ratios = {key: _ratio(full[key], lora[key]) for key in COMPARED}

    print(f"policy {full['params_total'] / 1e6:.2f} M params in bf16, hidden {args.hidden}, layers {args.layers}, "
          f"batch {args.batch}, LoRA rank {args.rank} (adapters in {', '.join(lora['trainable_dtypes'])})")
    print(f"{'':24s} {'full':>14s} {'LoRA':>14s} {'full / LoRA':>12s}")
    shown = {"trainable_params": lambda n: f"{n:,}", "grad_bytes": _bytes, "optimizer_state_bytes": _bytes,
             "step_peak_rss_mb": lambda n: "n/a" if n is None else f"{n:.1f} MB"}
    for key in COMPARED:
        ratio = ratios[key]
        print(f"{key:24s} {shown[key](full[key]):>14s} {shown[key](lora[key]):>14s} "
              f"{'n/a' if ratio is None else f'{ratio:.1f}x':>12s}")
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": _settings(args), "full": full, "lora": lora, "ratios": ratios},
                                        indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
