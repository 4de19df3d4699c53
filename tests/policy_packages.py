"""Small real policy packages for the tests and benches: VLA policies of about 0.2 M parameters (distinct
weights per seed) signed with a real Ed25519 key, and the five kinds of bad package a robot must refuse.
Used by the policy node's tests (ros2_ws/src/wmpo_ros/test), the trust and push tests here and
bench/bench_swap.py, bench/bench_load_contention.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from wmpo_core.registry.signing import KeyPair, generate_keypair, sign_package
from wmpo_core.registry.verify import MANIFEST_FILE, SIGNATURE_FILE, sha256_file

# A fast VLA (about 0.2 M parameters): inference in ~15 ms on one CPU thread, so tests and
# the bench run the node at a real control rate on a shared machine.
SMALL_VLA = {
    "image_size": 32, "patch_size": 8, "hidden_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
    "intermediate_size": 128, "vision_hidden_size": 64, "vision_layers": 1, "vision_heads": 2,
    "vision_intermediate_size": 128, "max_text_tokens": 16,
}
INSTRUCTION = "lift the red cube"
BAD_KINDS = ("unsigned", "wrong_key", "tampered", "shapes", "pickle")
# the reason a node must give for each kind of bad package
BAD_REASONS = {
    "unsigned": "signature.json: missing, the package is unsigned",
    "wrong_key": "is not a trusted key",
    "tampered": "model.safetensors: sha256",
    "shapes": "has shape",
    "pickle": "optimizer.pt: refused, '.pt' is a pickle-based format",
}


def make_keys(root: Path) -> tuple[KeyPair, KeyPair]:
    """(trusted, untrusted) Ed25519 key pairs."""
    return generate_keypair(root / "trusted"), generate_keypair(root / "untrusted")


def build_package(out: Path, seed: int, version: str, key: KeyPair | None, parent: str | None = None,
                  **config) -> Path:
    """A real VLA policy package (random weights from `seed`, manifest `parent`), signed with `key` unless None."""
    import torch

    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.registry.package import save_package

    torch.manual_seed(seed)
    policy = VLAPolicy(VLAConfig(**{**SMALL_VLA, **config}))
    save_package(policy, out, parent=parent, data=[f"episode_{seed:03d}"], version=version)
    if key is not None:
        sign_package(out, key.private_key)
    return out


def rehash(pkg: Path, version: str | None = None) -> None:
    """Rewrite manifest.json so it lists every file with its current sha256 (and a new version)."""
    manifest = json.loads((pkg / MANIFEST_FILE).read_text())
    manifest["files"] = {p.relative_to(pkg).as_posix(): sha256_file(p) for p in sorted(pkg.rglob("*"))
                         if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)}
    if version is not None:
        manifest["version"] = version
    (pkg / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def make_bad_package(kind: str, good: Path, out: Path, trusted: KeyPair, untrusted: KeyPair) -> Path:
    """A copy of `good` under a new version that a robot must refuse, for one reason only:

    unsigned; signed by an untrusted key; weight bytes changed after signing; config.json
    disagreeing with the tensor shapes (hashes and signature valid); a pickle file added
    after signing (the signer itself refuses to sign one).
    """
    shutil.copytree(good, out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    version = f"bad-{kind}-{out.name}"
    if kind == "unsigned":
        rehash(out, version)
    elif kind == "wrong_key":
        rehash(out, version)
        sign_package(out, untrusted.private_key)
    elif kind == "tampered":
        rehash(out, version)
        sign_package(out, trusted.private_key)
        data = bytearray((out / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # one bit of the last weight
        (out / "model.safetensors").write_bytes(bytes(data))
    elif kind == "shapes":
        config = json.loads((out / "config.json").read_text())
        config["intermediate_size"] = config["intermediate_size"] * 2
        (out / "config.json").write_text(json.dumps(config, indent=2))
        rehash(out, version)
        sign_package(out, trusted.private_key)
    elif kind == "pickle":
        rehash(out, version)
        sign_package(out, trusted.private_key)
        (out / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle stream added after signing: only refused
    else:
        raise ValueError(f"unknown bad package kind {kind!r}; expected one of {BAD_KINDS}")
    return out


def camera_frames(n: int = 4, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """`n` distinct random camera frames (at a size the policy must resize, as from a real camera)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def expected_chunks(pkg: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """What the package predicts for each image with INSTRUCTION, loaded the way `wmpo eval` loads it."""
    from wmpo_core.policy.commands.eval import make_policy_fn

    fn, *_ = make_policy_fn(str(pkg), "lift", 0)
    return [np.asarray(fn(SimpleNamespace(images={"agentview": img}, joint_positions=np.zeros(0)), INSTRUCTION))
            for img in images]
