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

Cheap checks come first and everything read is capped (:class:`PackageLimits`): a JSON
file's size is known before it is parsed, the number of files before any is hashed, each
file's size before its bytes are read; a reason is cut to a bounded length, so a hostile
package costs milliseconds and kilobytes to refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

# model_type -> function(config) -> {tensor name: shape}; filled by the policy modules. A rule may also
# take a ``package_dir`` keyword (see _apply_shape_rule), hence the open parameter list.
ShapeRule = Callable[..., Mapping[str, Sequence[int]]]
_SHAPE_RULES: dict[str, ShapeRule] = {}


class PackageError(ValueError):
    """A package (or one of its files) is malformed; the message names the file and field."""


class VerificationCancelled(PackageError):
    """Verification stopped because its caller asked (a rollback preempting a load)."""


@dataclass(frozen=True)
class PackageLimits:
    """Caps checked before anything is allocated or hashed (bytes unless named otherwise).

    The defaults fit a 7B OpenVLA package in bf16 with room to spare; a robot with other
    needs passes its own.
    """

    max_manifest_bytes: int = 1 << 20  # manifest.json, parsed before the signature is checked
    max_signature_bytes: int = 64 << 10
    max_config_bytes: int = 4 << 20  # config.json, parsed to build the model on the meta device
    max_files: int = 256  # entries in the package directory and in the manifest
    max_file_bytes: int = 64 << 30
    max_total_bytes: int = 64 << 30
    max_reason_chars: int = 300  # one refusal reason
    max_report_chars: int = 2000  # all reasons of one refusal together


DEFAULT_LIMITS = PackageLimits()


def bounded(text: str, limit: int = DEFAULT_LIMITS.max_reason_chars) -> str:
    """`text` cut to `limit` characters (with a note of how much was cut): reasons quote untrusted input."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def join_reasons(reasons: Sequence[str], limits: PackageLimits = DEFAULT_LIMITS) -> str:
    """One line of refusal reasons, each and all together bounded."""
    return bounded("; ".join(bounded(r, limits.max_reason_chars) for r in reasons), limits.max_report_chars)


def sha256_file(path: Path, chunk_size: int = 1 << 20, should_stop: Callable[[], bool] | None = None) -> str:
    """Hex sha256 of a file, read in chunks so large weights never sit in memory twice.

    `should_stop` is polled between chunks; when it answers True, VerificationCancelled is raised.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            if should_stop is not None and should_stop():
                raise VerificationCancelled(f"{Path(path).name}: verification cancelled")
            digest.update(block)
    return digest.hexdigest()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def canonical_json_bytes(obj: Any) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8, so reformatting a
    manifest (pretty-printing, key order) does not break its signature."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def read_json_object(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; raise PackageError naming the file.

    With `max_bytes` a larger file is refused before it is read. NaN / Infinity and nesting
    too deep for the parser are refused like any other invalid JSON.
    """
    try:
        if max_bytes is not None and (size := os.stat(path).st_size) > max_bytes:
            raise PackageError(f"{path}: {size} bytes, more than the {max_bytes} allowed")
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise PackageError(f"{path}: file is missing") from None
    except RecursionError:
        raise PackageError(f"{path}: not valid JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        if isinstance(exc, PackageError):
            raise
        raise PackageError(f"{path}: not valid JSON ({bounded(str(exc), 120)})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_manifest(pkg_dir: str | Path, limits: PackageLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Read ``manifest.json`` of a package (size-capped) and check that its ``files`` field is usable."""
    path = Path(pkg_dir) / MANIFEST_FILE
    manifest = read_json_object(path, limits.max_manifest_bytes)
    manifest_file_hashes(manifest, path, limits)
    return manifest


def manifest_file_hashes(manifest: Mapping[str, Any], source: str | Path = MANIFEST_FILE,
                         limits: PackageLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` from a manifest's ``files`` field.

    Accepts ``{path: sha256}``, ``{path: {"sha256": ...}}`` and ``[{"path": ..., "sha256": ...}]``.
    Raises PackageError for an unusable field, an unsafe path (absolute, ``..``) or more
    entries than ``limits.max_files``.
    """
    files = manifest.get("files")
    if isinstance(files, Mapping | list) and len(files) > limits.max_files:
        raise PackageError(f"{source}: field 'files' lists {len(files)} files, more than the {limits.max_files} allowed")
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


def package_files(pkg_dir: str | Path, max_entries: int | None = None) -> list[str]:
    """Every entry under the package directory as relative posix paths (symlinks included).

    With `max_entries`, PackageError once the walk meets more entries than that (a
    directory of millions of files is refused without listing them all).
    """
    root = Path(pkg_dir)
    found = []
    seen = 0
    for path in root.rglob("*"):
        seen += 1
        if max_entries is not None and seen > max_entries:
            raise PackageError(f"{root}: more than {max_entries} entries in the package directory")
        if path.is_dir() and not path.is_symlink():
            continue
        found.append(path.relative_to(root).as_posix())
    return sorted(found)


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


def check_files(pkg_dir: str | Path, manifest: Mapping[str, Any], limits: PackageLimits = DEFAULT_LIMITS,
                should_stop: Callable[[], bool] | None = None) -> list[str]:
    """Hashes match the manifest, nothing is missing or extra, no symlinks, no pickles.

    Counts and sizes are checked before any file is hashed; `should_stop` (polled while
    hashing) makes it raise VerificationCancelled.
    """
    root = Path(pkg_dir)
    try:
        expected = manifest_file_hashes(manifest, root / MANIFEST_FILE, limits)
        # the directory may hold a few more entries than the manifest lists (manifest, signature, subfolders)
        present = package_files(root, limits.max_files * 2 + 2)
    except PackageError as exc:
        return [str(exc)]
    reasons: list[str] = []
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
    to_hash: list[str] = []
    total = 0
    for name in expected:
        path = root / name
        if name not in present_set:
            reasons.append(f"{name}: listed in {MANIFEST_FILE} but missing")
            continue
        if path.is_symlink() or not path.is_file():
            continue  # already refused above
        size = path.stat().st_size
        total += size
        if size > limits.max_file_bytes:
            reasons.append(f"{name}: {size} bytes, more than the {limits.max_file_bytes} allowed per file")
        else:
            to_hash.append(name)
    if total > limits.max_total_bytes:
        reasons.append(f"{root.name}: files total {total} bytes, more than the {limits.max_total_bytes} allowed")
    if reasons:
        return reasons  # nothing is hashed in a package already refused
    for name in to_hash:
        digest = expected[name]
        actual = sha256_file(root / name, should_stop=should_stop)
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
    """The registered shape rule for a config's model type (None when none is registered).

    The registry imports no model code: a model package registers its rule when it is imported
    (``import wmpo_core.policy`` registers ``wmpo-vla``)."""
    model_type = config_model_type(config)
    if model_type is None:
        return None
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
        raise PackageError(f"{Path(path).name}: not a readable safetensors file ({bounded(str(exc), 200)})") from None


def _apply_shape_rule(rule: ShapeRule, config: Mapping[str, Any], root: Path) -> Mapping[str, Sequence[int]]:
    """Call ``rule(config)``; a rule with a ``package_dir`` parameter also gets the package (its own
    tokenizer decides special-token ids, e.g. OpenVLA's ``<PAD>``)."""
    import inspect

    try:
        wants_dir = "package_dir" in inspect.signature(rule).parameters
    except (TypeError, ValueError):
        wants_dir = False
    return rule(config, package_dir=root) if wants_dir else rule(config)


def check_model_shapes(pkg_dir: str | Path, shape_rule: ShapeRule | None = None) -> list[str]:
    """``config.json`` parses and the tensors in ``model.safetensors`` have exactly the
    names and shapes the config implies (per the model type's shape rule)."""
    root = Path(pkg_dir)
    try:
        config = read_json_object(root / CONFIG_FILE, DEFAULT_LIMITS.max_config_bytes)
    except PackageError as exc:
        return [f"{CONFIG_FILE}: {exc}"]
    try:
        actual = safetensors_shapes(root / MODEL_FILE)
    except PackageError as exc:
        return [str(exc)]
    rule = shape_rule or shape_rule_for(config)
    if rule is None:
        return [
            f"{CONFIG_FILE}: no shape rule known for field 'model_type' = {config_model_type(config)!r} "
            f"(registered ones: {sorted(_SHAPE_RULES)}), cannot check {MODEL_FILE}"
        ]
    try:
        expected = {name: tuple(int(d) for d in shape) for name, shape in _apply_shape_rule(rule, config, root).items()}
    except Exception as exc:  # the rule parses an untrusted config; any failure is a refusal
        return [f"{CONFIG_FILE}: does not describe a valid model ({type(exc).__name__}: {bounded(str(exc), 200)})"]
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
