"""`wmpo predict`: the action chunk a policy outputs for one image and instruction."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wmpo_core.policy.placement import DEVICE_HELP, DTYPE_HELP, DTYPES

HELP = "print the action chunk a policy outputs for one image"


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the command-line options."""
    parser.add_argument("--policy", required=True, type=Path,
                        help="policy package (verified), a model directory (config.json + model.safetensors) or an OpenVLA checkpoint")
    parser.add_argument("--image", required=True, type=Path, help="PNG/JPEG of the first camera the policy uses")
    parser.add_argument("--instruction", required=True, help="task instruction")
    parser.add_argument("--unnorm-key", help="which norm_stats entry converts actions to physical units")
    parser.add_argument("--proprio", help="comma-separated proprio values, for policies that take them")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    """Load the policy, run one prediction, print the chunk."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from wmpo_core.control import ACTION_NAMES
    from wmpo_core.data.normalization import NormStatsError
    from wmpo_core.policy.loading import load_policy
    from wmpo_core.policy.modeling_vla import PolicyLoadError
    from wmpo_core.registry.package import PackageError

    try:
        policy = load_policy(args.policy, args.unnorm_key, device=args.device, dtype=args.dtype)
        image = np.asarray(Image.open(args.image).convert("RGB"))
        proprio = np.array([float(x) for x in args.proprio.split(",")]) if args.proprio else None
        chunk = policy.predict_chunk({policy.config.cameras[0]: image, **{c: image for c in policy.config.cameras[1:]}},
                                     args.instruction, proprio, temperature=args.temperature)
    except (PackageError, PolicyLoadError, NormStatsError, OSError, UnidentifiedImageError, ValueError) as exc:
        print(f"wmpo predict: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"policy_version": policy.version, "instruction": args.instruction,
                          "device": str(policy.device), "dtype": str(policy.camera_embed.dtype).removeprefix("torch."),
                          "action_names": list(ACTION_NAMES), "chunk": chunk.tolist()}))
    else:
        print(f"policy {policy.version}; {len(chunk)} steps x {len(ACTION_NAMES)}: {', '.join(ACTION_NAMES)}")
        for row in chunk:
            print("  " + " ".join(f"{v:+.4f}" for v in row))
    return 0
