"""Policy packages: save / load round trip, manifest, and refusal of tampered or unsafe packages."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.loading import load_package
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.registry.package import PackageError, save_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(num_layers=1))
    root = tmp_path_factory.mktemp("pkg") / "v1"
    save_package(policy, root, parent="vla-parent-0", data=["ep_000", "ep_001"])
    return policy, root


@pytest.fixture
def copy(package, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(package[1], dst)
    return dst


def test_round_trip_and_manifest(package):
    policy, root = package
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["parent"] == "vla-parent-0" and manifest["version"] == policy.version
    assert manifest["training_data"]["episode_ids"] == ["ep_000", "ep_001"]
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "norm_stats.json", "tokenizer.json"}
    loaded = load_package(root)
    assert loaded.version == manifest["version"] and not loaded.training
    for (k, a), b in zip(policy.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_refuses_to_overwrite(package):
    with pytest.raises(FileExistsError, match="not empty"):
        save_package(package[0], package[1])


def test_tampered_weights_rejected_naming_the_file(copy):
    tensors = load_file(str(copy / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(copy / "model.safetensors"))
    with pytest.raises(PackageError, match=r"model.safetensors: sha256 .* does not match manifest.json"):
        load_package(copy)


def test_tampered_norm_stats_rejected(copy):
    text = (copy / "norm_stats.json").read_text().replace("1.0", "2.0", 1)
    (copy / "norm_stats.json").write_text(text)
    with pytest.raises(PackageError, match="norm_stats.json: sha256"):
        load_package(copy)


def test_missing_file_rejected(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match="tokenizer.json: listed in manifest.json but missing"):
        load_package(copy)


@pytest.mark.parametrize("name", ["optimizer.pt", "weights.bin", "extra.pkl", "last.ckpt"])
def test_pickle_files_rejected(copy, name):
    (copy / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PackageError, match=rf"{name}: refused"):
        load_package(copy)


def test_shape_mismatch_rejected_even_with_consistent_hashes(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["hidden_size"] = 64
    (copy / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((copy / "manifest.json").read_text())
    import hashlib

    manifest["files"]["config.json"] = hashlib.sha256((copy / "config.json").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"model.safetensors: tensor .* has shape .* config.json implies"):
        load_package(copy)
