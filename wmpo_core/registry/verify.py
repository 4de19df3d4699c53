"""Offline content checks of a policy package (everything except the signature).

A policy package is a directory::

    manifest.json       {"version": ..., "parent": ..., "files": {relpath: sha256 hex, ...}, ...}
    signature.json      Ed25519 signature over the canonical manifest bytes (see signing.py)
    config.json         the model configuration (JSON object, ``model_type`` names the model)
    model.safetensors   the weights
    ...                 norm_stats.json, tokenizer.json, any other file listed in the manifest

The manifest holds the sha256 of every other file, so a valid signature over the manifest
plus matching hashes covers the whole package. Each check here returns one-line reasons
that name the offending file; an empty list means the check passed. Nothing here loads
tensor data or unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
# Files a package must list in its manifest; norm stats and tokenizer are model-specific.
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE)
# Suffixes of formats that execute code on load (pickle and torch's pickle-in-zip).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"})

# model_type -> function(config) -> {tensor name: shape}; filled by the policy modules.
ShapeRule = Callable[[Mapping[str, Any]], Mapping[str, Sequence[int]]]
_SHAPE_RULES: dict[str, ShapeRule] = {}


class PackageError(ValueError):
    """A package (or one of its files) is malformed; the message names the file and field."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large weights never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def canonical_json_bytes(obj: Any) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8, so reformatting a
    manifest (pretty-printing, key order) does not break its signature."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def read_json_object(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; raise PackageError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_manifest(pkg_dir: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a package and check that its ``files`` field is usable."""
    path = Path(pkg_dir) / MANIFEST_FILE
    manifest = read_json_object(path)
    manifest_file_hashes(manifest, path)
    return manifest


def manifest_file_hashes(manifest: Mapping[str, Any], source: str | Path = MANIFEST_FILE) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` from a manifest's ``files`` field.

    Accepts ``{path: sha256}``, ``{path: {"sha256": ...}}`` and ``[{"path": ..., "sha256": ...}]``.
    Raises PackageError for an unusable field or an unsafe path (absolute, ``..``).
    """
    files = manifest.get("files")
    entries: list[tuple[Any, Any]]
    if isinstance(files, Mapping):
        entries = [(k, v.get("sha256") if isinstance(v, Mapping) else v) for k, v in files.items()]
    elif isinstance(files, list):
        entries = [(e.get("path"), e.get("sha256")) if isinstance(e, Mapping) else (e, None) for e in files]
    else:
        raise PackageError(f"{source}: field 'files' must map each file path to its sha256, got {files!r:.80}")
    hashes: dict[str, str] = {}
    for name, digest in entries:
        if not isinstance(name, str) or not name:
            raise PackageError(f"{source}: field 'files' has an entry without a path: {name!r:.80}")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name:
            raise PackageError(f"{source}: field 'files' entry {name!r} points outside the package")
        if name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise PackageError(f"{source}: field 'files' must not list {name} (it cannot hash itself)")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise PackageError(f"{source}: field 'files' entry {name!r} has no lowercase hex sha256: {digest!r:.80}")
        hashes[str(pure)] = digest
    return hashes


def package_files(pkg_dir: str | Path) -> list[str]:
    """Every entry under the package directory as relative posix paths (symlinks included)."""
    root = Path(pkg_dir)
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        found.append(path.relative_to(root).as_posix())
    return found


def pickle_reason(path: Path) -> str | None:
    """Why a file is refused as pickle-format (by suffix or magic bytes), or None if it is not."""
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return f"{name}: refused, '{path.suffix}' is a pickle-based format that can run code on load"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"{name}: cannot be read ({exc})"
    # Pickle protocols 2-5 start with PROTO (0x80) followed by the protocol number.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"{name}: refused, content is a pickle stream (magic 0x80 0x{head[1]:02x})"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                pickled = [n for n in archive.namelist() if n.endswith(".pkl")]
        except zipfile.BadZipFile:
            pickled = []
        if pickled:
            return f"{name}: refused, content is a torch zip checkpoint (holds pickle {pickled[0]!r})"
    return None


def check_files(pkg_dir: str | Path, manifest: Mapping[str, Any]) -> list[str]:
    """Hashes match the manifest, nothing is missing or extra, no symlinks, no pickles."""
    root = Path(pkg_dir)
    try:
        expected = manifest_file_hashes(manifest, root / MANIFEST_FILE)
    except PackageError as exc:
        return [str(exc)]
    reasons: list[str] = []
    present = package_files(root)
    for name in present:
        path = root / name
        if path.is_symlink():
            reasons.append(f"{name}: refused, symlinks may point outside the package")
            continue
        if not path.is_file():  # a FIFO or device would block or never end when hashed
            reasons.append(f"{name}: refused, not a regular file")
            continue
        if name not in expected and name not in (MANIFEST_FILE, SIGNATURE_FILE):
            reasons.append(f"{name}: file is not listed in {MANIFEST_FILE}")
        if (why := pickle_reason(path)) is not None:
            reasons.append(why)
    present_set = set(present)
    for name in REQUIRED_FILES:
        if name not in expected:
            reasons.append(f"{name}: required file is not listed in {MANIFEST_FILE}")
    for name, digest in expected.items():
        path = root / name
        if name not in present_set:
            reasons.append(f"{name}: listed in {MANIFEST_FILE} but missing")
            continue
        if path.is_symlink() or not path.is_file():
            continue  # already refused above
        actual = sha256_file(path)
        if actual != digest:
            reasons.append(f"{name}: sha256 {actual[:12]}... does not match {MANIFEST_FILE} ({digest[:12]}...)")
    return reasons


def register_shape_rule(model_type: str, rule: ShapeRule) -> None:
    """Let a policy module declare which tensor shapes its ``config.json`` implies."""
    _SHAPE_RULES[model_type] = rule


def config_model_type(config: Mapping[str, Any]) -> str | None:
    """The model type a config declares (``model_type``, or diffusers-style ``_class_name``)."""
    value = config.get("model_type", config.get("_class_name"))
    return value if isinstance(value, str) else None


def shape_rule_for(config: Mapping[str, Any]) -> ShapeRule | None:
    """The registered shape rule for a config's model type, importing the policy modules
    once so that their registrations run."""
    model_type = config_model_type(config)
    if model_type is None:
        return None
    if model_type not in _SHAPE_RULES:
        try:
            import wmpo_core.policy  # noqa: F401  (registers the shape rules of the shipped models)
        except ImportError:
            pass
    return _SHAPE_RULES.get(model_type)


def meta_state_dict_shapes(build_model: Callable[[Mapping[str, Any]], Any]) -> ShapeRule:
    """A shape rule that builds the model from its config on the meta device (no memory,
    no weights) and reads its state-dict shapes; ``build_model(config) -> nn.Module``."""

    def rule(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        import torch

        with torch.device("meta"):
            model = build_model(config)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    return rule


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, without reading tensor data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PackageError(f"{Path(path).name}: not a readable safetensors file ({exc})") from None


def check_model_shapes(pkg_dir: str | Path, shape_rule: ShapeRule | None = None) -> list[str]:
    """``config.json`` parses and the tensors in ``model.safetensors`` have exactly the
    names and shapes the config implies (per the model type's shape rule)."""
    root = Path(pkg_dir)
    try:
        config = read_json_object(root / CONFIG_FILE)
    except PackageError as exc:
        return [f"{CONFIG_FILE}: {exc}"]
    try:
        actual = safetensors_shapes(root / MODEL_FILE)
    except PackageError as exc:
        return [str(exc)]
    rule = shape_rule or shape_rule_for(config)
    if rule is None:
        return [
            f"{CONFIG_FILE}: no shape rule known for field 'model_type' = {config_model_type(config)!r}, "
            f"cannot check {MODEL_FILE}"
        ]
    try:
        expected = {name: tuple(int(d) for d in shape) for name, shape in rule(config).items()}
    except Exception as exc:  # the rule parses an untrusted config; any failure is a refusal
        return [f"{CONFIG_FILE}: does not describe a valid model ({type(exc).__name__}: {exc})"]
    reasons = []
    for name in sorted(expected.keys() - actual.keys()):
        reasons.append(f"{MODEL_FILE}: tensor {name!r} expected by {CONFIG_FILE} is missing")
    for name in sorted(actual.keys() - expected.keys()):
        reasons.append(f"{MODEL_FILE}: tensor {name!r} is not part of the model in {CONFIG_FILE}")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] != actual[name]:
            reasons.append(
                f"{MODEL_FILE}: tensor {name!r} has shape {list(actual[name])}, "
                f"{CONFIG_FILE} implies {list(expected[name])}"
            )
    return reasons
