"""`wmpo export`: package a policy (or take a package), record its parent version and sign it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from wmpo_core.registry.commands.common import (
    error,
    register_model_types,
)

HELP = (
    "Package a policy (from a checkpoint or the newest one of a training run) or take an existing package, "
    "record its parent version and sign it."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo export`."""
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


def main(args: argparse.Namespace) -> int:
    """Package (when given a checkpoint or run) and sign a policy into --out."""
    register_model_types()
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
            return error(f"{out}: already exists; refusing to overwrite")
        if kind == "checkpoint":
            from wmpo_core.policy.modeling_vla import VLAPolicy
            from wmpo_core.registry.package import save_package

            if same_dir:
                return error(f"{out}: must differ from the checkpoint directory")
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
        return error(str(exc))
    print(f"signed {kind} {source} as package {out} (version {manifest.get('version')}, parent {manifest.get('parent')})")
    print(f"signature: {signature}")
    return 0
