"""Learned policy backend `vla`: a signed policy package (wmpo_core.registry) served by the policy node.

Loading goes through `wmpo_core.policy.loading.load_verified_policy`, the loader `wmpo eval`
and `wmpo compare` share: the package is verified against the node's trusted public keys
(signature, file hashes, no pickle, tensor shapes) before any tensor is read, then loaded,
and the signature is checked again over the exact manifest the loader hashed (so a package
changed between the two steps is refused, not half-trusted).

Prediction calls the policy's own `predict_chunk`, the same call `wmpo eval` makes
(`wmpo_core.policy.commands.eval.make_policy_fn`): images are resized and normalized
inside the model, proprio (joint_states positions) is passed only to policies trained
with it. torch is imported only when this backend is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wmpo_core.registry.signing import trusted_key_paths
from wmpo_ros.policy_backends.base import PolicyBackend, PolicyError

if TYPE_CHECKING:
    from rclpy.node import Node

POLICY_PATH_PARAM = "policy_path"
TRUSTED_KEYS_PARAM = "trusted_keys"
WARM_UP_INSTRUCTION = "warm up"


def declare_once(node: Node, name: str, default: Any, description: str, read_only: bool = False) -> Any:
    """Declare a parameter unless it already is (the backend and the swap service share them); return its value."""
    from wmpo_ros.common import declare

    if node.has_parameter(name):
        return node.get_parameter(name).value
    return declare(node, name, default, description, read_only=read_only)


def declare_package_parameters(node: Node) -> dict[str, Any]:
    """`policy_path` (writable: `wmpo push` sets it) and `trusted_keys`, shared by the backend and the swap service."""
    return {
        "policy_path": declare_once(node, POLICY_PATH_PARAM, "",
                                    "policy package directory to load (set by `wmpo push`, then ~/load_policy); "
                                    "once running, only a folder inside parameter 'policy_root' is accepted"),
        # read-only: a remote SetParameters must never be able to change whom the robot trusts
        "trusted_keys": declare_once(node, TRUSTED_KEYS_PARAM, "",
                                     "Ed25519 public key PEM, or a folder of them (comma-separated for several), "
                                     "that packages must be signed by", read_only=True),
    }


def load_verified_policy(path: str | Path, trusted_keys: str | Iterable[str],
                         should_stop: Callable[[], bool] | None = None) -> Any:
    """The node's package loader: :func:`wmpo_core.policy.loading.load_verified_policy` (signature,
    hashes, shapes, then the model), refusing an empty `trusted_keys` in the node's own words."""
    from wmpo_core.policy.loading import load_verified_policy as load
    from wmpo_core.registry.verify import PackageError

    if not trusted_key_paths(trusted_keys):
        raise PackageError(f"parameter '{TRUSTED_KEYS_PARAM}' is empty: this node trusts no signing key, "
                           f"so it loads no package")
    return load(path, trusted_keys, should_stop=should_stop)


class VLAPolicyBackend(PolicyBackend):
    """A VLA policy package: verified at load, predicting with `VLAPolicy.predict_chunk`."""

    name = "vla"
    needs_instruction = True

    @classmethod
    def declare_parameters(cls, node: Node) -> dict[str, Any]:
        """policy_path, trusted_keys, vla.temperature, vla.unnorm_key, vla.num_threads, vla.device, vla.dtype."""
        return {
            **declare_package_parameters(node),
            # read-only: read once at start (and given to every package loaded later), a change at run time
            # would be accepted and silently ignored
            "temperature": declare_once(node, "vla.temperature", 0.0, "action sampling temperature (0 = greedy)",
                                        read_only=True),
            "unnorm_key": declare_once(node, "vla.unnorm_key", "",
                                  "norm_stats entry that converts actions to physical units (empty: the package's)",
                                       read_only=True),
            "num_threads": declare_once(node, "vla.num_threads", 0,
                                   "torch CPU threads for inference (0: torch's default; 1 avoids thread "
                                   "oversubscription on a busy CPU)", read_only=True),
            "device": declare_once(node, "vla.device", "auto",
                                   "where the policy runs: auto (the first CUDA GPU if any, else cpu), cpu, cuda:N"),
            "dtype": declare_once(node, "vla.dtype", "auto",
                                  "weights dtype: auto (as stored in the package), float32, bfloat16, float16"),
        }

    def __init__(self, options: Mapping[str, Any], policy: Any | None = None) -> None:
        """Load `options['policy_path']` verified against `options['trusted_keys']`, or wrap an
        already verified `policy` (as the swap service does after loading it in the background)."""
        super().__init__(options)
        self.path = str(self.options.get("policy_path", "") or "")
        self.temperature = float(self.options.get("temperature", 0.0))
        self.unnorm_key = str(self.options.get("unnorm_key", "") or "") or None
        if self.temperature < 0:
            raise ValueError(f"parameter 'vla.temperature': must be >= 0, got {self.temperature}")
        threads = int(self.options.get("num_threads", 0))
        if threads > 0:
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        if policy is None:
            if not self.path:
                raise ValueError(f"parameter '{POLICY_PATH_PARAM}': empty; the vla backend needs a policy package")
            policy = load_verified_policy(self.path, self.options.get("trusted_keys", ""))
        from wmpo_core.policy.placement import place_policy

        try:  # also a policy the swap service loaded: every package runs where the node says
            place_policy(policy, self.options.get("device", "auto"), self.options.get("dtype", "auto"))
        except ValueError as exc:
            raise ValueError(f"parameter 'vla.device' / 'vla.dtype': {exc}") from None
        self._policy = policy
        self._version = str(policy.version)
        # read once: the node asks for these at every tick, also after close()
        self._chunk_size, self._action_dim = int(policy.config.chunk_size), int(policy.config.action_dim)
        self._cameras = tuple(policy.config.cameras)
        self.manifest: dict[str, Any] = dict(getattr(policy, "manifest", None) or {})
        if self.unnorm_key is not None:
            try:
                policy.norm_stats.get(self.unnorm_key, "action")
            except (KeyError, ValueError) as exc:
                raise ValueError(f"parameter 'vla.unnorm_key': {exc}") from None

    @property
    def policy(self) -> Any:
        """The loaded `VLAPolicy` (None once closed)."""
        return self._policy

    @property
    def version(self) -> str:
        """The package version (manifest `version`)."""
        return self._version

    @property
    def chunk_size(self) -> int:
        """K of the package's config."""
        return self._chunk_size

    @property
    def action_dim(self) -> int:  # type: ignore[override]
        """D of the package's config."""
        return self._action_dim

    @property
    def cameras(self) -> tuple[str, ...]:
        """The cameras the policy was trained on, in its order."""
        return self._cameras

    @property
    def image_size(self) -> None:
        """Any size: the model resizes to its own input size, exactly as in `wmpo eval`."""
        return None

    def predict_chunk(self, images: dict[str, np.ndarray], instruction: str, proprio: np.ndarray | None,
                      state: Mapping[str, Any] | None) -> np.ndarray:
        """(K, 7) physical actions from the cameras, the instruction and, if the policy uses it, proprio."""
        policy = self._policy  # one reference for the whole call: close() may drop it meanwhile
        if policy is None:
            raise PolicyError(f"policy {self._version}: backend is closed")
        needed = int(policy.config.proprio_dim)
        if needed > 0:
            if proprio is None:
                raise PolicyError(f"joint_states: policy {self._version} needs proprio of dimension {needed}; "
                                  f"none received yet")
            proprio = np.asarray(proprio, dtype=np.float64).reshape(-1)
            if proprio.shape[0] != needed:
                raise PolicyError(f"joint_states: {proprio.shape[0]} positions, policy {self._version} expects {needed}")
        else:
            proprio = None
        try:
            return policy.predict_chunk(images, instruction, proprio, temperature=self.temperature,
                                        unnorm_key=self.unnorm_key)
        except ValueError as exc:  # prepare_batch names the bad input (camera, image shape, proprio)
            raise PolicyError(f"policy {self._version}: {exc}") from None

    def warm_up(self) -> float:
        """One dummy inference (allocates buffers, fills caches); returns its duration in seconds.

        Raises PolicyError when the model answers with a wrong shape or a non-finite action,
        so such a package is refused before it ever reaches the control loop.
        """
        policy = self._policy
        if policy is None:
            raise PolicyError(f"policy {self._version}: backend is closed")
        cfg = policy.config
        size = int(cfg.image_size)
        images = {cam: np.zeros((size, size, 3), np.uint8) for cam in cfg.cameras}
        proprio = np.zeros(int(cfg.proprio_dim)) if cfg.proprio_dim > 0 else None
        start = time.perf_counter()
        chunk = np.asarray(self.predict_chunk(images, WARM_UP_INSTRUCTION, proprio, None), dtype=np.float64)
        seconds = time.perf_counter() - start
        if chunk.shape != (self.chunk_size, self.action_dim):
            raise PolicyError(f"{self.path}: warm-up gave a chunk of shape {chunk.shape}, expected "
                              f"({self.chunk_size}, {self.action_dim})")
        if not np.all(np.isfinite(chunk)):
            raise PolicyError(f"{self.path}: warm-up gave a non-finite action (NaN or inf)")
        return seconds

    def describe(self) -> dict[str, Any]:
        """Version, parent, creation time and path, for diagnostics."""
        return {"version": self._version, "parent": self.manifest.get("parent"),
                "created_at": self.manifest.get("created_at"), "path": self.path}

    def close(self) -> None:
        """Drop the model; an inference already running keeps its own reference until it returns."""
        self._policy = None
