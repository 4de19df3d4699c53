"""Ed25519 signing and offline verification of policy packages.

The signature covers the canonical bytes of ``manifest.json`` (see
:func:`wmpo_core.registry.verify.canonical_json_bytes`); the manifest lists the sha256
of every other file, so one signature covers the whole package. ``signature.json``::

    {"algorithm": "ed25519", "key_id": "<sha256 hex of the raw public key>",
     "signed_file": "manifest.json", "signature": "<base64>", "signed_at": "<ISO 8601>"}

A robot keeps only public keys; :func:`verify_package` is what it runs before loading.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wmpo_core.registry.verify import (
    DEFAULT_LIMITS,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    PackageError,
    PackageLimits,
    ShapeRule,
    bounded,
    canonical_json_bytes,
    check_files,
    check_model_shapes,
    join_reasons,
    read_json_object,
    read_manifest,
)

ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "wmpo_policy_signing.pem"
PUBLIC_KEY_FILE = "wmpo_policy_signing.pub.pem"


@dataclass(frozen=True)
class KeyPair:
    """Paths of a freshly generated key pair and the key id robots will see."""

    private_key: Path
    public_key: Path
    key_id: str


@dataclass
class VerificationReport:
    """Outcome of :func:`verify_package`; ``reasons`` holds one line per refusal."""

    package: Path
    version: str | None = None
    key_id: str | None = None
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.reasons

    @property
    def reason(self) -> str:
        """The first refusal (empty when the package is accepted)."""
        return self.reasons[0] if self.reasons else ""

    def raise_for_refusal(self) -> None:
        """Raise PackageError carrying every refusal reason when the package is refused."""
        if self.reasons:
            raise PackageError(f"{self.package}: refused: " + join_reasons(self.reasons))

    def __str__(self) -> str:
        head = (f"{self.package}: {'OK' if self.ok else 'REFUSED'} (version {bounded(str(self.version), 140)}, "
                f"key {bounded(str(self.key_id), 80)})")
        refused = [f"  refused: {bounded(r)}" for r in self.reasons[:20]]
        if len(self.reasons) > 20:
            refused.append(f"  ... and {len(self.reasons) - 20} more reasons")
        return "\n".join([head, *refused, *(f"  ok: {c}" for c in self.checks)])


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key: short, stable, independent of PEM layout."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL + mode at creation: the private key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have narrowed or the filesystem ignored the create mode


def generate_keypair(out_dir: str | Path, name: str = "wmpo_policy_signing") -> KeyPair:
    """Create an Ed25519 key pair in ``out_dir``: ``<name>.pem`` (PKCS#8, mode 0600) and
    ``<name>.pub.pem`` (SubjectPublicKeyInfo). Refuses to overwrite existing keys."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.pem", out / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path}: already exists; refusing to overwrite a signing key")
    private_key = Ed25519PrivateKey.generate()
    public_key = private_key.public_key()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new_file(private_path, private_pem, 0o600)
    _write_new_file(public_path, public_pem, 0o644)
    return KeyPair(private_path, public_path, key_id(public_key))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key; PackageError names the file on failure."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key; PackageError names the file on failure."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PackageError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def trusted_key_paths(value: str | Iterable[str]) -> list[str]:
    """The non-empty entries of a trusted-keys setting: one path, a comma-separated list, or a list."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(s).strip() for s in items if s and str(s).strip()]


def load_trusted_keys(trusted: str | Path | Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """``{key id: public key}`` from a PEM file, a directory of ``*.pem`` files, or a list of both."""
    items = [trusted] if isinstance(trusted, str | Path) else list(trusted)
    keys: dict[str, Ed25519PublicKey] = {}
    for item in items:
        path = Path(item)
        paths = sorted(path.glob("*.pem")) if path.is_dir() else [path]
        for key_path in paths:
            if path.is_dir() and b"PRIVATE KEY" in key_path.read_bytes()[:64]:
                continue  # a key directory may also hold the private key; only public keys are trust anchors
            key = load_public_key(key_path)
            keys[key_id(key)] = key
    if not keys:
        raise PackageError(f"{trusted}: no trusted public key found")
    return keys


def sign_package(pkg_dir: str | Path, private_key_path: str | Path) -> Path:
    """Sign a package's manifest and write ``signature.json`` (atomically, replacing any old one).

    Refuses (PackageError) when the files do not match the manifest, since a signature
    over a manifest that lies about its files would vouch for nothing.
    """
    root = Path(pkg_dir)
    manifest = read_manifest(root)
    if reasons := check_files(root, manifest):
        raise PackageError(f"{root}: cannot sign: " + "; ".join(reasons))
    private_key = load_private_key(private_key_path)
    signature = private_key.sign(canonical_json_bytes(manifest))
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signed_file": MANIFEST_FILE,
        "signature": base64.b64encode(signature).decode("ascii"),
        "signed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".signature-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / SIGNATURE_FILE)
    return root / SIGNATURE_FILE


def check_signature(
    pkg_dir: str | Path, manifest: dict, trusted_keys: dict[str, Ed25519PublicKey],
    limits: PackageLimits = DEFAULT_LIMITS,
) -> tuple[list[str], str | None]:
    """Reasons the signature is refused (empty if valid and from a trusted key), and its key id."""
    path = Path(pkg_dir) / SIGNATURE_FILE
    if not path.exists():
        return [f"{SIGNATURE_FILE}: missing, the package is unsigned"], None
    try:
        record = read_json_object(path, limits.max_signature_bytes)
    except PackageError as exc:
        return [f"{SIGNATURE_FILE}: {exc}"], None
    kid = record.get("key_id")
    if not isinstance(kid, str):
        return [f"{SIGNATURE_FILE}: field 'key_id' must be a hex string, got {bounded(repr(kid), 80)}"], None
    if record.get("algorithm") != ALGORITHM:
        return [f"{SIGNATURE_FILE}: field 'algorithm' is {bounded(repr(record.get('algorithm')), 80)}, "
                f"expected {ALGORITHM!r}"], kid
    if record.get("signed_file", MANIFEST_FILE) != MANIFEST_FILE:
        return [f"{SIGNATURE_FILE}: field 'signed_file' must be {MANIFEST_FILE!r}"], kid
    if kid not in trusted_keys:
        return [f"{SIGNATURE_FILE}: key {str(kid)[:16]}... is not a trusted key"], kid
    try:
        signature = base64.b64decode(str(record.get("signature", "")), validate=True)
    except ValueError:
        return [f"{SIGNATURE_FILE}: field 'signature' is not base64"], kid
    try:
        trusted_keys[kid].verify(signature, canonical_json_bytes(manifest))
    except (InvalidSignature, ValueError):  # ValueError: a manifest with no canonical bytes (NaN)
        return [f"{SIGNATURE_FILE}: signature does not match {MANIFEST_FILE} (manifest altered or wrong key)"], kid
    return [], kid


def signed_manifest(pkg_dir: str | Path, trusted_keys: dict[str, Ed25519PublicKey],
                    limits: PackageLimits = DEFAULT_LIMITS) -> dict:
    """The manifest of a package, once its signature by a trusted key is valid (PackageError otherwise).

    The cheap first step of every load: two small files are read (size-capped) and one
    signature checked; nothing is hashed and no model is built.
    """
    root = Path(pkg_dir)
    if not root.is_dir():
        raise PackageError(f"{root}: not a package directory")
    manifest = read_manifest(root, limits)
    reasons, _ = check_signature(root, manifest, trusted_keys, limits)
    if reasons:
        raise PackageError(f"{root}: refused: " + join_reasons(reasons, limits))
    return manifest


def verify_package(
    pkg_dir: str | Path,
    trusted: str | Path | Iterable[str | Path],
    shape_rule: ShapeRule | None = None,
    limits: PackageLimits = DEFAULT_LIMITS,
    should_stop: Callable[[], bool] | None = None,
) -> VerificationReport:
    """Check a package offline before it is loaded anywhere.

    ``trusted`` is a public key PEM, a directory of them, or a list. Checks, cheapest
    first, each only if the previous passed: the manifest's size and file count
    (``limits``); signature present, valid and from a trusted key; file sizes; every
    file's sha256 matches the manifest; no file outside the manifest; no pickle-format
    file; ``config.json`` parses and the tensor shapes in ``model.safetensors`` match it
    (``shape_rule`` or the rule registered for the config's ``model_type``). An unsigned
    or foreign package is therefore refused without hashing anything or building a model.
    Never raises for a bad package (read ``report.reasons``), except VerificationCancelled
    when ``should_stop`` answers True while hashing.
    """
    root = Path(pkg_dir)
    report = VerificationReport(package=root)
    if not root.is_dir():
        report.reasons.append(f"{root}: not a package directory")
        return report
    try:
        manifest = read_manifest(root, limits)
    except PackageError as exc:
        report.reasons.append(f"{MANIFEST_FILE}: {exc}")
        return report
    version = manifest.get("version")
    report.version = None if version is None else bounded(str(version), 140)
    try:
        keys = load_trusted_keys(trusted)
    except PackageError as exc:
        report.reasons.append(str(exc))
        return report
    signature_reasons, report.key_id = check_signature(root, manifest, keys, limits)
    report.reasons += signature_reasons
    if signature_reasons:
        return report  # nothing unsigned is hashed or built
    assert report.key_id is not None  # a signature without reasons against it names its key
    report.checks.append(f"{SIGNATURE_FILE}: valid Ed25519 signature by trusted key {report.key_id[:16]}...")
    file_reasons = check_files(root, manifest, limits, should_stop)
    report.reasons += file_reasons
    if not file_reasons:
        report.checks.append(f"{MANIFEST_FILE}: every file present, hashed as listed, none extra, no pickle")
    if file_reasons:
        return report  # headers are read only from files known to be the listed bytes
    shape_reasons = check_model_shapes(root, shape_rule)
    report.reasons += shape_reasons
    if not shape_reasons:
        report.checks.append("model.safetensors: tensor names and shapes match config.json")
    return report
