"""A package exported by earlier code still verifies, loads and predicts the same chunks (the files in
tests/data/package_before_loading_split, written before policy loading moved out of the registry)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

DATA = Path(__file__).resolve().parent / "data" / "package_before_loading_split"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)  # as the fixture's README says
    return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]


def test_package_from_before_the_loading_split_verifies_loads_and_predicts_the_same(tmp_path):
    import torch

    from wmpo_core.policy.loading import load_verified_policy

    package = shutil.copytree(DATA / "package", tmp_path / "package")  # read-only use, but never the repo's copy
    expected = json.loads((DATA / "expected_chunks.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "verify", str(package), "--public-key",
                           str(DATA / "trusted_key.pub.pem")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    torch.set_num_threads(1)
    policy = load_verified_policy(package, str(DATA / "trusted_key.pub.pem"))
    assert policy.version == expected["version"] == "vla-compat-bfa3ebe"
    chunks = [np.asarray(policy.predict_chunk({"agentview": im}, "lift the red cube", None, temperature=0.0))
              for im in _images()]
    assert len(chunks) == len(expected["chunks"]) == 3
    for got, want in zip(chunks, expected["chunks"], strict=True):
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-6)


def test_the_old_package_is_refused_when_a_byte_changes(tmp_path):
    """The fixture is checked, not just loaded: one flipped weight byte fails verification."""
    from wmpo_core.policy.loading import load_verified_policy
    from wmpo_core.registry.verify import PackageError

    package = shutil.copytree(DATA / "package", tmp_path / "package")
    weights = package / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="model.safetensors: sha256"):
        load_verified_policy(package, str(DATA / "trusted_key.pub.pem"))
