"""Builders shared by the registry and signing tests: real policy packages on disk.

A package here holds a small real torch model saved with safetensors, its config.json
(model_type ``test-mlp``, whose shape rule is registered below), norm stats, a tokenizer
file and a manifest with the sha256 of every file.
"""

from __future__ import annotations

import json
from pathlib import Path

from wmpo_core.registry.verify import MANIFEST_FILE, SIGNATURE_FILE, register_shape_rule, sha256_file

MODEL_TYPE = "test-mlp"
DEFAULT_CONFIG = {"model_type": MODEL_TYPE, "in_dim": 6, "hidden": 8, "out_dim": 3}


def build_mlp(config):
    """The model a ``test-mlp`` config describes (torch imported here: child processes skip it)."""
    from torch import nn

    return nn.Sequential(nn.Linear(config["in_dim"], config["hidden"]), nn.Tanh(), nn.Linear(config["hidden"], config["out_dim"]))


def mlp_shapes(config) -> dict[str, tuple[int, ...]]:
    """Shape rule of ``test-mlp`` written out by hand, so processes that only verify need no torch;
    test_signing checks it equals the rule built from the module on the meta device."""
    i, h, o = (int(config[k]) for k in ("in_dim", "hidden", "out_dim"))
    if min(i, h, o) <= 0:
        raise ValueError(f"dimensions must be positive, got {i}, {h}, {o}")
    return {"0.weight": (h, i), "0.bias": (h,), "2.weight": (o, h), "2.bias": (o,)}


register_shape_rule(MODEL_TYPE, mlp_shapes)


def write_manifest(pkg: Path, version: str = "v1", parent: str | None = None) -> dict:
    """Hash every file of ``pkg`` (except manifest and signature) into manifest.json."""
    files = {
        p.relative_to(pkg).as_posix(): sha256_file(p)
        for p in sorted(pkg.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)
    }
    manifest = {"format": "wmpo-policy/1", "version": version, "parent": parent, "files": files}
    (pkg / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_package(pkg: Path, version: str = "v1", parent: str | None = None, seed: int = 0, weights_config=None, **config) -> Path:
    """A complete unsigned package; ``weights_config`` builds the weights from a different config."""
    import torch
    from safetensors.torch import save_file

    pkg.mkdir(parents=True, exist_ok=True)
    cfg = {**DEFAULT_CONFIG, **config}
    torch.manual_seed(seed)
    model = build_mlp({**cfg, **(weights_config or {})})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(pkg / "model.safetensors"))
    (pkg / "config.json").write_text(json.dumps(cfg, indent=2))
    (pkg / "norm_stats.json").write_text(json.dumps({"action": {"mean": [0.0] * 3, "std": [1.0] * 3}}))
    (pkg / "tokenizer.json").write_text(json.dumps({"n_bins": 256}))
    write_manifest(pkg, version, parent)
    return pkg
