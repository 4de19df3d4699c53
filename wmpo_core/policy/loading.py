"""Loading policies from disk: the one place a package becomes a model.

The registry (:mod:`wmpo_core.registry`) knows bytes, hashes, manifests and signatures and
imports no model code; this module builds a :class:`VLAPolicy` from what it has verified.

* :func:`load_package`: a policy package, every hash and tensor shape checked first;
* :func:`load_verified_policy`: a *signed* package, the signature checked against trusted
  public keys before anything is hashed (what the robot's policy node runs);
* :func:`load_policy`: any policy on disk (package, model directory, OpenVLA checkpoint),
  the entry point of `wmpo eval`, `wmpo predict`, training and `wmpo compare`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from wmpo_core.policy.modeling_vla import CONFIG_NAME, PolicyLoadError, VLAPolicy
from wmpo_core.policy.placement import place_policy
from wmpo_core.registry.package import verify_package_contents
from wmpo_core.registry.signing import check_signature, load_trusted_keys, trusted_key_paths, verify_package
from wmpo_core.registry.verify import MANIFEST_FILE, PackageError


def load_package(directory: str | Path) -> VLAPolicy:
    """Verify then load a package as a :class:`VLAPolicy` (eval mode); ``policy.manifest`` holds its manifest.

    Raises :class:`PackageError` naming the package and every reason it is refused (hash, unlisted
    or pickle file, tensor shapes that disagree with ``config.json``, a model that fails to build).
    """
    manifest = verify_package_contents(directory)
    try:
        policy = VLAPolicy.from_pretrained(directory, version=manifest["version"])
    except (PolicyLoadError, ValueError) as exc:
        raise PackageError(f"{directory}: {exc}") from exc
    policy.manifest = manifest
    return policy.eval()


def load_verified_policy(path: str | Path, trusted_keys: str | Iterable[str],
                         should_stop: Callable[[], bool] | None = None) -> VLAPolicy:
    """Verify a package against ``trusted_keys`` (a public key PEM or folder of them, comma-separated
    or a list), then load it (eval mode).

    Raises :class:`PackageError` (a ValueError) whose message names the package and every reason
    it is refused: unsigned, untrusted key, tampered file, unlisted or pickle file, tensor shapes
    that disagree with config.json, or a model that fails to build. The signature is checked
    before anything is hashed, and again over the exact manifest the loader hashed (a package
    changed between the two steps is refused, not half-trusted); ``should_stop`` (polled while
    hashing) raises ``VerificationCancelled``.
    """
    keys = trusted_key_paths(trusted_keys)
    if not keys:
        raise PackageError("trusted_keys is empty: no signing key is trusted, so no package is loaded")
    report = verify_package(path, keys, should_stop=should_stop)
    report.raise_for_refusal()
    policy = load_package(path)  # re-hashes every file against the manifest it reads
    reasons, _ = check_signature(path, policy.manifest, load_trusted_keys(keys))
    if reasons:
        raise PackageError(f"{path}: refused: package changed while loading: " + "; ".join(reasons))
    return policy


def load_policy(path: str | Path, unnorm_key: str | None = None, device: str | None = None,
                dtype: str | None = None, trusted_keys: str | Iterable[str] | None = None) -> VLAPolicy:
    """Load ``path`` in eval mode (on ``device`` in ``dtype`` when given, see :func:`place_policy`).

    * a policy package (``manifest.json``): every hash and shape verified first; with
      ``trusted_keys`` also its signature (:func:`load_verified_policy`);
    * an OpenVLA checkpoint (``config.json`` with ``model_type`` ``openvla``): mapped without remote code;
    * a model directory written by :meth:`VLAPolicy.save_pretrained` (e.g. a training checkpoint).

    With ``trusted_keys`` only a signed package is accepted.
    """
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a policy directory")
    if trusted_keys is not None:
        policy = load_verified_policy(d, trusted_keys)
    elif (d / MANIFEST_FILE).exists():
        policy = load_package(d)
    else:
        try:
            model_type = json.loads((d / CONFIG_NAME).read_text()).get("model_type")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{d / CONFIG_NAME}: cannot read: {exc}") from exc
        if model_type == "openvla":
            from wmpo_core.policy.openvla import load_openvla

            policy = load_openvla(d, unnorm_key)
        else:
            policy = VLAPolicy.from_pretrained(d).eval()
    if unnorm_key is not None:
        policy.norm_stats.get(unnorm_key)  # fail now, not at the first prediction
        policy.config.unnorm_key = unnorm_key
    if device is not None or dtype is not None:
        place_policy(policy, device, dtype)
    return policy
