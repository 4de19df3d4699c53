"""`wmpo verify`: verify a policy package offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.registry.commands import common

HELP = (
    "Verify a policy package offline: signature by a trusted key, every file's sha256, no unlisted or "
    "pickle files, tensor shapes against config.json. Exits 1 with the reasons when refused."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo verify`."""
    parser.add_argument("package", metavar="PKG", type=Path, help="policy package directory")
    common.add_public_key(parser, required=False)


def main(args: argparse.Namespace) -> int:
    """Exit 0 when the package passes every check, 1 with the reasons otherwise."""
    common.register_model_types()
    from wmpo_core.registry.signing import verify_package

    trusted = common.trusted_keys(args)
    if trusted is None:
        return common.error(f"verify: give --public-key or set ${common.PUBLIC_KEY_ENV}")
    report = verify_package(args.package, trusted)
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
