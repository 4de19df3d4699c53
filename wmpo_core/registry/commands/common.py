"""What the package verbs share: the trusted public keys (``--public-key`` or $WMPO_PUBLIC_KEY),
the error line and the registration of the shipped model types."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PUBLIC_KEY_ENV = "WMPO_PUBLIC_KEY"


def error(message: str) -> int:
    """Print ``wmpo: message`` on stderr; exit status 1."""
    print(f"wmpo: {message}", file=sys.stderr)
    return 1


def register_model_types() -> None:
    """Import the shipped models so that their tensor-shape rules are registered (the registry itself
    imports no model code; checking a package's shapes needs its model type's rule)."""
    import wmpo_core.policy  # noqa: F401


def add_public_key(parser: argparse.ArgumentParser, required: bool) -> None:
    """The ``--public-key`` option of `wmpo verify` and `wmpo push`."""
    parser.add_argument(
        "--public-key",
        action="append",
        type=Path,
        required=required,
        help=f"trusted Ed25519 public key PEM or directory of them (repeatable; default ${PUBLIC_KEY_ENV})",
    )


def trusted_keys(args: argparse.Namespace) -> list[Path] | None:
    """The ``--public-key`` paths, else those of $WMPO_PUBLIC_KEY, else None."""
    if args.public_key:
        return list(args.public_key)
    env = os.environ.get(PUBLIC_KEY_ENV)
    return [Path(p) for p in env.split(os.pathsep) if p] if env else None
