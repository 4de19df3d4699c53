"""`wmpo push`: copy a signed package to a robot and ask its policy node to load it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmpo_core.registry.commands import common

HELP = (
    "Verify a package, copy it atomically to DIR/<version> (locally or over ssh), then ask the policy "
    "node to load it (set its policy_path parameter, call <node>/load_policy; needs the ros extra)."
)
# `wmpo push`: the package was copied, but the node gave no verdict on loading it within --wait
PUSH_PENDING_EXIT = 3


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo push`."""
    parser.add_argument("package", metavar="PKG", type=Path, help="signed policy package directory")
    parser.add_argument("--to", required=True, metavar="DIR_OR_HOST:DIR", help="policy directory on the robot")
    common.add_public_key(parser, required=False)
    parser.add_argument("--node", default="/policy", help="policy node whose ~/load_policy is called (default /policy)")
    parser.add_argument("--no-load", action="store_true", help="only copy; do not ask the node to load it")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each service")
    parser.add_argument("--wait", type=float, default=300.0,
                        help="seconds to wait for the node's final verdict when it answers that the load is pending "
                             f"(default 300; exit code {PUSH_PENDING_EXIT} if none came)")
    parser.add_argument("--transport", choices=("rsync", "scp"), default=None, help="remote copy tool (default: rsync if installed)")


def main(args: argparse.Namespace) -> int:
    """Verify, copy atomically, then (unless --no-load) ask the policy node to load the package and wait for
    its verdict. Exit 0: loaded (or copied with --no-load); 1: refused or failed; PUSH_PENDING_EXIT: copied,
    but the node gave no verdict within --wait."""
    common.register_model_types()
    from wmpo_core.registry.push import PolicyLoadError, PolicyLoadPending, push_package
    from wmpo_core.registry.verify import PackageError

    trusted = common.trusted_keys(args)
    if trusted is None:
        return common.error(f"push: give --public-key or set ${common.PUBLIC_KEY_ENV} (the package is verified before it leaves)")
    for name in ("timeout", "wait"):
        value = getattr(args, name)
        if not (value >= 0 and value != float("inf")):
            return common.error(f"push: --{name} must be a number of seconds >= 0, got {value}")
    try:
        result = push_package(
            args.package,
            args.to,
            trusted,
            node=None if args.no_load else args.node,
            timeout_s=args.timeout,
            transport=args.transport,
            wait_s=args.wait,
        )
    except PolicyLoadPending as exc:
        print(f"wmpo push: copied, but not known to be loaded: {exc}", file=sys.stderr)
        return PUSH_PENDING_EXIT
    except (PackageError, PolicyLoadError, FileExistsError, RuntimeError, OSError, ValueError) as exc:
        return common.error(f"push: {exc}")
    where = f"{result.destination.split(':')[0]}:{result.policy_path}" if ":" in result.destination else result.policy_path
    print(f"version {result.version} at {where}" + (" (already there)" if result.already_present else ""))
    if result.load_message is not None:
        print(f"{args.node}: {result.load_message}")
    return 0
