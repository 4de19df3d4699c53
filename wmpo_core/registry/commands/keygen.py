"""`wmpo keygen`: make an Ed25519 signing key pair."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmpo_core.registry.commands.common import (
    error,
)

HELP = "Make an Ed25519 key pair: the private key signs packages, robots keep the public key."


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo keygen`."""
    parser.add_argument("--out", required=True, type=Path, help="directory for the key pair (created if missing)")
    parser.add_argument("--name", default="wmpo_policy_signing", help="file stem of the key files")


def main(args: argparse.Namespace) -> int:
    """Write an Ed25519 key pair; the private key is mode 0600."""
    from wmpo_core.registry.signing import generate_keypair

    try:
        pair = generate_keypair(args.out, args.name)
    except (FileExistsError, OSError) as exc:
        return error(str(exc))
    print(f"private key: {pair.private_key} (keep it on the workstation)")
    print(f"public key:  {pair.public_key} (copy it to every robot)")
    print(f"key id:      {pair.key_id}")
    return 0
