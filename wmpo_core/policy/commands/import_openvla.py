"""`wmpo import-openvla`: an OpenVLA or OpenVLA-OFT checkpoint directory -> a signed policy package.

    wmpo import-openvla ~/ckpt/openvla-7b-oft-finetuned-libero-spatial --out pkgs/oft-v1 \\
        --key ~/.config/wmpo/keys/wmpo_policy_signing.pem --unnorm-key libero_spatial_no_noops

Nothing runs from the checkpoint (no remote code): ``config.json``, ``*.safetensors``,
``tokenizer.json`` and ``dataset_statistics.json`` are read as data, OFT's ``*.pt`` heads with
torch's restricted loader. The package holds the checkpoint's own tokenizer and norm stats,
its weights in their stored dtype (or ``--dtype``), and is signed like any ``wmpo export``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HELP = "turn an OpenVLA / OpenVLA-OFT checkpoint directory into a signed policy package"
DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the command-line options."""
    parser.add_argument("source", metavar="SRC", type=Path, help="checkpoint directory (Hugging Face layout)")
    parser.add_argument("--out", required=True, type=Path, help="package directory to write (must not exist)")
    parser.add_argument("--key", required=True, type=Path, help="Ed25519 private key PEM that signs the package")
    parser.add_argument("--unnorm-key", help="norm stats entry to use (required when there are several)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep the stored dtype)")
    parser.add_argument("--variant", choices=("auto", "openvla", "oft"), default="auto",
                        help="auto: OpenVLA-OFT when *.pt heads or config.json num_actions_chunk are present")
    parser.add_argument("--chunk-size", type=int,
                        help="OFT actions per chunk (default: config.json num_actions_chunk, else OFT's platform rule)")
    parser.add_argument("--cameras", help="OFT: comma-separated camera names, one per input image (default: agentview)")
    parser.add_argument("--parent", default=None, help="version recorded as the package's parent")


def import_openvla(source: Path, out: Path, key: Path, unnorm_key: str | None = None, dtype: str | None = None,
                   variant: str = "auto", chunk_size: int | None = None, cameras: tuple[str, ...] | None = None,
                   parent: str | None = None):
    """Load the checkpoint, write it as a package into ``out`` and sign it; returns the loaded policy."""
    import torch

    from wmpo_core.policy.openvla import load_openvla
    from wmpo_core.registry.package import new_version_id, save_package, summarize_training_data
    from wmpo_core.registry.signing import load_private_key, sign_package

    if out.exists():
        raise FileExistsError(f"{out}: already exists; refusing to overwrite")
    load_private_key(key)  # a bad key fails before gigabytes are read
    policy = load_openvla(source, unnorm_key, variant=variant, chunk_size=chunk_size, cameras=cameras,
                          dtype=getattr(torch, DTYPES[dtype]) if dtype else None)
    prefix = "oft" if policy.config.decoding == "oft" else "openvla"
    data = summarize_training_data((), imported_from=str(source.resolve()), source_version=str(policy.version))
    save_package(policy, out, parent=parent, data=data, version=new_version_id(prefix))
    try:
        sign_package(out, key)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no unsigned package left behind
        raise
    return policy


def main(args: argparse.Namespace) -> int:
    """Import, package and sign; print what was imported."""
    from wmpo_core.data.normalization import NormStatsError
    from wmpo_core.policy.configuration_vla import ConfigError
    from wmpo_core.policy.modeling_vla import PolicyLoadError
    from wmpo_core.registry.verify import PackageError

    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip()) if args.cameras else None
    try:
        policy = import_openvla(args.source, args.out, args.key, args.unnorm_key, args.dtype, args.variant,
                                args.chunk_size, cameras, args.parent)
    except (PolicyLoadError, PackageError, NormStatsError, ConfigError, FileExistsError, OSError, ValueError) as exc:
        print(f"wmpo import-openvla: {exc}", file=sys.stderr)
        return 2
    cfg = policy.config
    dtype = str(policy.camera_embed.dtype).removeprefix("torch.")
    print(f"imported {args.source} as {cfg.extra.get('source')} -> {args.out} (version {policy.version}, signed)")
    print(f"  decoding {cfg.decoding}, chunk {cfg.chunk_size} x {cfg.action_dim}"
          + (f" ({cfg.extra['chunk_size_source']})" if "chunk_size_source" in cfg.extra else "")
          + f", unnorm key {cfg.unnorm_key!r}, {dtype}, {policy.num_parameters():,} parameters"
          + (f", proprio {cfg.proprio_dim}" if cfg.proprio_dim else "")
          + (", L1-regression head" if cfg.action_head == "l1_regression" else ""))
    return 0
