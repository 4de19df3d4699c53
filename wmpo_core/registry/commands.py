"""`wmpo keygen`, `wmpo export`, `wmpo verify`, `wmpo push`: sign policies and ship them to robots.

    wmpo keygen --out ~/.config/wmpo/keys
    wmpo export runs/grpo-3/policy --out pkgs/v4 --key ~/.config/wmpo/keys/wmpo_policy_signing.pem --parent v3
    wmpo verify pkgs/v4 --public-key ~/.config/wmpo/keys/wmpo_policy_signing.pub.pem
    wmpo push pkgs/v4 --to robot1:/opt/wmpo/policies --public-key KEY.pub.pem --node /policy

`push` asks the policy node to load the package over ROS 2, which needs the ros extra
(``pip install 'wmpo[ros]'``); `--no-load` only copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HELP = "sign policy packages, verify them offline, push them to a robot"
PUBLIC_KEY_ENV = "WMPO_PUBLIC_KEY"
# `wmpo push`: the package was copied, but the node gave no verdict on loading it within --wait
PUSH_PENDING_EXIT = 3


def _error(message: str) -> int:
    print(f"wmpo: {message}", file=sys.stderr)
    return 1


def _register_model_types() -> None:
    """Import the shipped models so that their tensor-shape rules are registered (the registry itself
    imports no model code; checking a package's shapes needs its model type's rule)."""
    import wmpo_core.policy  # noqa: F401


# ---------------------------------------------------------------- keygen
def configure_keygen(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo keygen`."""
    parser.description = "Make an Ed25519 key pair: the private key signs packages, robots keep the public key."
    parser.add_argument("--out", required=True, type=Path, help="directory for the key pair (created if missing)")
    parser.add_argument("--name", default="wmpo_policy_signing", help="file stem of the key files")


def main_keygen(args: argparse.Namespace) -> int:
    """Write an Ed25519 key pair; the private key is mode 0600."""
    from wmpo_core.registry.signing import generate_keypair

    try:
        pair = generate_keypair(args.out, args.name)
    except (FileExistsError, OSError) as exc:
        return _error(str(exc))
    print(f"private key: {pair.private_key} (keep it on the workstation)")
    print(f"public key:  {pair.public_key} (copy it to every robot)")
    print(f"key id:      {pair.key_id}")
    return 0


# ---------------------------------------------------------------- export
def configure_export(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo export`."""
    parser.description = (
        "Package a policy (from a checkpoint or the newest one of a training run) or take an existing package, "
        "record its parent version and sign it."
    )
    parser.add_argument("source", metavar="RUN_OR_CKPT", type=Path, help="a policy package, a checkpoint directory or a training run directory")
    parser.add_argument("--out", required=True, type=Path, help="package directory to write (must not exist, or be SOURCE)")
    parser.add_argument("--key", required=True, type=Path, help="Ed25519 private key PEM")
    parser.add_argument("--parent", default=None, help="version this policy was improved from (recorded in the manifest)")


def resolve_export_source(source: Path) -> tuple[str, Path]:
    """What ``wmpo export`` was given: ``("package", dir)`` for a directory with a manifest,
    ``("checkpoint", dir)`` for weights + config.json (a ``checkpoints/step_N``), or for a
    training run directory its newest ``package*`` directory, else its newest checkpoint."""
    from wmpo_core.registry.verify import CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, PackageError

    if not source.is_dir():
        raise PackageError(f"{source}: not a directory")
    if (source / MANIFEST_FILE).is_file():
        return "package", source
    if (source / MODEL_FILE).is_file() and (source / CONFIG_FILE).is_file():
        return "checkpoint", source
    packages = sorted(p for p in source.glob("package*") if (p / MANIFEST_FILE).is_file())
    if packages:
        return "package", packages[-1]
    checkpoints = sorted(
        p for p in (source / "checkpoints").glob("step_*") if (p / MODEL_FILE).is_file() and (p / CONFIG_FILE).is_file()
    )
    if checkpoints:
        return "checkpoint", checkpoints[-1]
    raise PackageError(
        f"{source}: neither a package ({MANIFEST_FILE}), a checkpoint ({MODEL_FILE} + {CONFIG_FILE}) "
        "nor a run directory holding package*/ or checkpoints/step_*/"
    )


def _checkpoint_data(checkpoint: Path) -> dict:
    """Manifest ``training_data`` for a checkpoint: its trainer state's episodes when recorded."""
    from wmpo_core.registry.package import summarize_training_data

    state_path = checkpoint / "trainer_state.json"  # written by wmpo_core.policy.train.save_checkpoint
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        state = {}
    episodes = state.get("train_episodes") if isinstance(state, dict) else None
    return summarize_training_data(
        episodes if isinstance(episodes, list) else (), source=str(checkpoint), steps=state.get("step") if isinstance(state, dict) else None
    )


def main_export(args: argparse.Namespace) -> int:
    """Package (when given a checkpoint or run) and sign a policy into --out."""
    _register_model_types()
    from wmpo_core.registry.signing import load_private_key, sign_package
    from wmpo_core.registry.verify import (
        MANIFEST_FILE,
        SIGNATURE_FILE,
        PackageError,
        check_model_shapes,
        read_manifest,
    )

    out = args.out
    created = False  # a half-made package is removed on failure, so a retry is not refused
    try:
        load_private_key(args.key)  # a bad key fails before anything is written
        kind, source = resolve_export_source(args.source)
        same_dir = out.resolve() == source.resolve()
        if out.exists() and not same_dir:
            return _error(f"{out}: already exists; refusing to overwrite")
        if kind == "checkpoint":
            from wmpo_core.policy.modeling_vla import VLAPolicy
            from wmpo_core.registry.package import save_package

            if same_dir:
                return _error(f"{out}: must differ from the checkpoint directory")
            save_package(VLAPolicy.from_pretrained(source), out, parent=args.parent, data=_checkpoint_data(source))
            created = True
        else:
            if not same_dir:
                # the old signature stays behind: the copy is signed afresh below
                shutil.copytree(source, out, ignore=shutil.ignore_patterns(SIGNATURE_FILE))
                created = True
            if args.parent is not None:
                manifest = read_manifest(out)
                manifest["parent"] = args.parent
                tmp = out / f".{MANIFEST_FILE}.tmp"
                tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, out / MANIFEST_FILE)
        # a package whose weights disagree with its config would be refused by every robot
        if reasons := check_model_shapes(out):
            raise PackageError(f"{out}: not signed: " + "; ".join(reasons))
        signature = sign_package(out, args.key)
        manifest = read_manifest(out)
    except (PackageError, OSError, ValueError) as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        return _error(str(exc))
    print(f"signed {kind} {source} as package {out} (version {manifest.get('version')}, parent {manifest.get('parent')})")
    print(f"signature: {signature}")
    return 0


# ---------------------------------------------------------------- verify
def _add_public_key(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--public-key",
        action="append",
        type=Path,
        required=required,
        help=f"trusted Ed25519 public key PEM or directory of them (repeatable; default ${PUBLIC_KEY_ENV})",
    )


def _trusted_keys(args: argparse.Namespace) -> list[Path] | None:
    if args.public_key:
        return list(args.public_key)
    env = os.environ.get(PUBLIC_KEY_ENV)
    return [Path(p) for p in env.split(os.pathsep) if p] if env else None


def configure_verify(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo verify`."""
    parser.description = (
        "Verify a policy package offline: signature by a trusted key, every file's sha256, no unlisted or "
        "pickle files, tensor shapes against config.json. Exits 1 with the reasons when refused."
    )
    parser.add_argument("package", metavar="PKG", type=Path, help="policy package directory")
    _add_public_key(parser, required=False)


def main_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the package passes every check, 1 with the reasons otherwise."""
    _register_model_types()
    from wmpo_core.registry.signing import verify_package

    trusted = _trusted_keys(args)
    if trusted is None:
        return _error(f"verify: give --public-key or set ${PUBLIC_KEY_ENV}")
    report = verify_package(args.package, trusted)
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- push
def configure_push(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo push`."""
    parser.description = (
        "Verify a package, copy it atomically to DIR/<version> (locally or over ssh), then ask the policy "
        "node to load it (set its policy_path parameter, call <node>/load_policy; needs the ros extra)."
    )
    parser.add_argument("package", metavar="PKG", type=Path, help="signed policy package directory")
    parser.add_argument("--to", required=True, metavar="DIR_OR_HOST:DIR", help="policy directory on the robot")
    _add_public_key(parser, required=False)
    parser.add_argument("--node", default="/policy", help="policy node whose ~/load_policy is called (default /policy)")
    parser.add_argument("--no-load", action="store_true", help="only copy; do not ask the node to load it")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each service")
    parser.add_argument("--wait", type=float, default=300.0,
                        help="seconds to wait for the node's final verdict when it answers that the load is pending "
                             f"(default 300; exit code {PUSH_PENDING_EXIT} if none came)")
    parser.add_argument("--transport", choices=("rsync", "scp"), default=None, help="remote copy tool (default: rsync if installed)")


def main_push(args: argparse.Namespace) -> int:
    """Verify, copy atomically, then (unless --no-load) ask the policy node to load the package and wait for
    its verdict. Exit 0: loaded (or copied with --no-load); 1: refused or failed; PUSH_PENDING_EXIT: copied,
    but the node gave no verdict within --wait."""
    _register_model_types()
    from wmpo_core.registry.push import PolicyLoadError, PolicyLoadPending, push_package
    from wmpo_core.registry.verify import PackageError

    trusted = _trusted_keys(args)
    if trusted is None:
        return _error(f"push: give --public-key or set ${PUBLIC_KEY_ENV} (the package is verified before it leaves)")
    for name in ("timeout", "wait"):
        value = getattr(args, name)
        if not (value >= 0 and value != float("inf")):
            return _error(f"push: --{name} must be a number of seconds >= 0, got {value}")
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
        return _error(f"push: {exc}")
    where = f"{result.destination.split(':')[0]}:{result.policy_path}" if ":" in result.destination else result.policy_path
    print(f"version {result.version} at {where}" + (" (already there)" if result.already_present else ""))
    if result.load_message is not None:
        print(f"{args.node}: {result.load_message}")
    return 0
