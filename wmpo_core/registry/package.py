"""Policy packages: the unit that is trained, signed, pushed and loaded.

A package is a directory::

    model.safetensors   weights (never a pickle)
    config.json         VLAConfig (``model_type`` = ``wmpo-vla``)
    norm_stats.json     OpenVLA norm_stats layout
    tokenizer.json      the instruction tokenizer
    manifest.json       format, version, parent, created_at, training data summary, sha256 of every file
    signature.json      optional, written by ``wmpo export`` (see signing.py)

:func:`verify_package_contents` checks every hash, refuses unlisted or pickle-format files and
tensor shapes that disagree with ``config.json`` before anything is deserialized; the
checks themselves live in :mod:`wmpo_core.registry.verify` (shared with signing). This
module imports no model code: :func:`wmpo_core.policy.loading.load_package` builds the
model from a package verified here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wmpo_core.registry.verify import (
    MANIFEST_FILE,
    PackageError,
    check_files,
    check_model_shapes,
    read_manifest,
    sha256_file,
)

PACKAGE_FORMAT = "wmpo-policy-package"
FORMAT_VERSION = 1
MODEL_TYPE = "wmpo-vla"
_VERSION_RE = re.compile(r"^[A-Za-z0-9._+-]{1,128}$")


def summarize_training_data(episode_ids: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """Manifest ``training_data``: episode count, their ids (up to 1000) and a sha256 over the sorted ids."""
    ids = sorted(str(e) for e in episode_ids)
    summary: dict[str, Any] = {
        "num_episodes": len(ids),
        "episodes_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    if len(ids) <= 1000:  # beyond that the hash alone identifies the set; the manifest stays small
        summary["episode_ids"] = ids
    summary.update(extra)
    return summary


def new_version_id(prefix: str = "vla") -> str:
    """A sortable, unique version id: ``<prefix>-<UTC timestamp>-<random hex>``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{os.urandom(3).hex()}"


def save_package(
    policy: Any,
    directory: str | Path,
    parent: str | None = None,
    data: dict[str, Any] | Iterable[str] | None = None,
    version: str | None = None,
) -> Path:
    """Write ``policy`` as a package into ``directory`` (created; must not hold another package).

    ``data`` is a summary dict or an iterable of episode ids. The package is assembled in a
    temporary sibling directory and renamed into place, so a crash never leaves half a package.
    Returns the package path; ``policy.version`` is set to the new version id.
    """
    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; refusing to overwrite a package")
    version = version or new_version_id()
    if not _VERSION_RE.match(version):
        raise ValueError(f"package version {version!r}: use letters, digits, '.', '_', '+', '-'")
    training = data if isinstance(data, dict) else summarize_training_data(data or ())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        old_version = policy.version
        policy.version = version
        try:
            written = policy.save_pretrained(tmp)
        finally:
            policy.version = old_version
        manifest = {
            "format": PACKAGE_FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": MODEL_TYPE,
            "version": version,
            "parent": parent,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "training_data": training,
            "files": {p.name: sha256_file(p) for p in sorted(written)},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    policy.version = version
    return out


def verify_package_contents(directory: str | Path) -> dict[str, Any]:
    """Every check short of the signature; returns the manifest or raises PackageError naming each bad file."""
    root = Path(directory)
    if not root.is_dir():
        raise PackageError(f"{root}: not a package directory")
    manifest = read_manifest(root)
    if manifest.get("format") not in (None, PACKAGE_FORMAT):
        raise PackageError(f"{root / MANIFEST_FILE}: field 'format' is {manifest.get('format')!r}, expected {PACKAGE_FORMAT!r}")
    fv = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(fv, int) or fv > FORMAT_VERSION:
        raise PackageError(f"{root / MANIFEST_FILE}: field 'format_version' {fv!r} is not supported (<= {FORMAT_VERSION})")
    version = manifest.get("version")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise PackageError(f"{root / MANIFEST_FILE}: field 'version' must be a version id, got {version!r}")
    reasons = check_files(root, manifest)
    if not reasons:  # shapes only once the bytes are known to be the listed ones
        reasons = check_model_shapes(root)
    if reasons:
        raise PackageError(f"{root}: refused: " + "; ".join(reasons))
    return manifest


def read_package_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a package, without verifying the files."""
    return read_manifest(directory)
