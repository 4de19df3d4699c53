"""Ed25519 signing and offline verification of real policy packages on disk."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from test_registry_helpers import DEFAULT_CONFIG, build_mlp, mlp_shapes, write_manifest, write_package

from wmpo_core.registry.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    sign_package,
    verify_package,
)
from wmpo_core.registry.verify import (
    PackageError,
    canonical_json_bytes,
    meta_state_dict_shapes,
    pickle_reason,
    safetensors_shapes,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _sign_anyway(pkg, keys):
    """Sign a manifest the way a compromised workstation could (sign_package refuses such packages):
    the robot's own checks must still refuse what the signature vouches for."""
    private = load_private_key(keys.private_key)
    signature = private.sign(canonical_json_bytes(json.loads((pkg / "manifest.json").read_text())))
    (pkg / "signature.json").write_text(json.dumps({
        "algorithm": "ed25519", "key_id": key_id(private.public_key()), "signed_file": "manifest.json",
        "signature": __import__("base64").b64encode(signature).decode()}))


@pytest.fixture
def signed(tmp_path, keys):
    pkg = write_package(tmp_path / "pkg")
    sign_package(pkg, keys.private_key)
    return pkg


def test_keygen_files_and_key_id(tmp_path, keys):
    assert stat.S_IMODE(os.stat(keys.private_key).st_mode) == 0o600
    public = load_public_key(keys.public_key)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.key_id == hashlib.sha256(raw).hexdigest()
    assert b"PRIVATE KEY" in keys.private_key.read_bytes() and b"PUBLIC KEY" in keys.public_key.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_keypair(keys.private_key.parent)
    # a directory holding both keys trusts only the public one
    assert list(load_trusted_keys(keys.private_key.parent)) == [keys.key_id]
    with pytest.raises(PackageError, match="not a readable PEM public key"):
        load_public_key(keys.private_key)


def test_signed_package_verifies(signed, keys):
    record = json.loads((signed / "signature.json").read_text())
    assert record["algorithm"] == "ed25519" and record["key_id"] == keys.key_id
    report = verify_package(signed, keys.public_key)
    assert report.ok, str(report)
    assert report.version == "v1" and report.key_id == keys.key_id and len(report.checks) == 3
    # signing covers the canonical manifest: pretty-printing it again keeps the signature valid
    manifest = json.loads((signed / "manifest.json").read_text())
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=4, sort_keys=True))
    assert verify_package(signed, [keys.public_key]).ok
    assert canonical_json_bytes(manifest) == canonical_json_bytes(json.loads(json.dumps(manifest, indent=1)))


def _only_reason(report):
    assert not report.ok
    return " | ".join(report.reasons)


def test_tampered_weights_refused(signed, keys):
    data = bytearray((signed / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (signed / "model.safetensors").write_bytes(bytes(data))
    reason = _only_reason(verify_package(signed, keys.public_key))
    assert "model.safetensors: sha256" in reason and "does not match manifest.json" in reason


def test_altered_manifest_refused(signed, keys):
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["version"] = "v9"
    (signed / "manifest.json").write_text(json.dumps(manifest))
    report = verify_package(signed, keys.public_key)
    assert report.reasons == ["signature.json: signature does not match manifest.json (manifest altered or wrong key)"]


def test_untrusted_key_and_unsigned_refused(signed, keys, tmp_path):
    other = generate_keypair(tmp_path / "other")
    reason = _only_reason(verify_package(signed, other.public_key))
    assert reason.startswith("signature.json: key ") and "is not a trusted key" in reason
    assert verify_package(signed, [other.public_key, keys.public_key]).ok
    (signed / "signature.json").unlink()
    assert _only_reason(verify_package(signed, keys.public_key)) == "signature.json: missing, the package is unsigned"


def test_extra_and_missing_files_refused(signed, keys):
    (signed / "notes.txt").write_text("not in the manifest")
    (signed / "tokenizer.json").unlink()
    reason = _only_reason(verify_package(signed, keys.public_key))
    assert "notes.txt: file is not listed in manifest.json" in reason
    assert "tokenizer.json: listed in manifest.json but missing" in reason


def test_pickle_files_refused_by_name_and_content(tmp_path, keys):
    pkg = write_package(tmp_path / "pkg")
    (pkg / "extra_state.json").write_bytes(pickle.dumps({"a": 1}, protocol=4))  # pickle under a harmless name
    torch.save({"w": torch.zeros(2)}, pkg / "weights.dat")  # torch zip checkpoint, written only, never loaded
    (pkg / "optimizer.pt").write_bytes(b"anything")
    write_manifest(pkg)
    sign_package_fails = pytest.raises(PackageError, match="cannot sign")
    with sign_package_fails:
        sign_package(pkg, keys.private_key)
    assert _only_reason(verify_package(pkg, keys.public_key)) == "signature.json: missing, the package is unsigned"
    _sign_anyway(pkg, keys)
    reason = _only_reason(verify_package(pkg, keys.public_key))
    assert "extra_state.json: refused, content is a pickle stream" in reason
    assert "weights.dat: refused, content is a torch zip checkpoint" in reason
    assert "optimizer.pt: refused, '.pt' is a pickle-based format" in reason
    assert pickle_reason(pkg / "model.safetensors") is None


def test_shape_mismatch_refused(tmp_path, keys):
    # config says hidden = 8, the weights were built with hidden = 5; hashes and signature are fine
    pkg = write_package(tmp_path / "pkg", weights_config={"hidden": 5})
    sign_package(pkg, keys.private_key)
    report = verify_package(pkg, keys.public_key)
    assert report.reasons == [
        "model.safetensors: tensor '0.bias' has shape [5], config.json implies [8]",
        "model.safetensors: tensor '0.weight' has shape [5, 6], config.json implies [8, 6]",
        "model.safetensors: tensor '2.weight' has shape [3, 5], config.json implies [3, 8]",
    ]


def test_bad_config_and_unknown_model_refused(tmp_path, keys):
    pkg = write_package(tmp_path / "pkg")
    (pkg / "config.json").write_text("{not json")
    write_manifest(pkg)
    sign_package(pkg, keys.private_key)
    assert "config.json" in _only_reason(verify_package(pkg, keys.public_key))
    pkg2 = write_package(tmp_path / "pkg2", model_type="someone-elses-model")
    sign_package(pkg2, keys.private_key)
    assert "no shape rule known for field 'model_type' = 'someone-elses-model'" in _only_reason(
        verify_package(pkg2, keys.public_key)
    )
    pkg3 = write_package(tmp_path / "pkg3", hidden=-4, weights_config={"hidden": 8})
    sign_package(pkg3, keys.private_key)
    assert "config.json: does not describe a valid model" in _only_reason(verify_package(pkg3, keys.public_key))


def test_unsafe_manifest_paths_and_symlinks_refused(tmp_path, keys):
    pkg = write_package(tmp_path / "pkg")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["../outside.txt"] = "0" * 64
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    assert "points outside the package" in _only_reason(verify_package(pkg, keys.public_key))
    pkg2 = write_package(tmp_path / "pkg2")
    (tmp_path / "secret.txt").write_text("x")
    (pkg2 / "link.txt").symlink_to(tmp_path / "secret.txt")
    write_manifest(pkg2)
    _sign_anyway(pkg2, keys)
    assert "link.txt: refused, symlinks may point outside the package" in _only_reason(verify_package(pkg2, keys.public_key))


def test_special_files_refused_without_blocking(signed, keys):
    os.mkfifo(signed / "pipe")  # hashing a FIFO would block forever
    assert verify_package(signed, keys.public_key).reasons == ["pipe: refused, not a regular file"]


def test_not_a_package(tmp_path, keys):
    assert "not a package directory" in _only_reason(verify_package(tmp_path / "nope", keys.public_key))
    (tmp_path / "empty").mkdir()
    assert _only_reason(verify_package(tmp_path / "empty", keys.public_key)).startswith("manifest.json:")


def test_meta_device_shape_rule(tmp_path):
    rule = meta_state_dict_shapes(build_mlp)
    for cfg in (DEFAULT_CONFIG, {**DEFAULT_CONFIG, "hidden": 32, "out_dim": 7}):
        assert rule(cfg) == mlp_shapes(cfg)
    pkg = write_package(tmp_path / "pkg", hidden=32)
    assert safetensors_shapes(pkg / "model.safetensors") == rule({**DEFAULT_CONFIG, "hidden": 32})
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(PackageError, match="junk.safetensors: not a readable safetensors file"):
        safetensors_shapes(tmp_path / "junk.safetensors")
