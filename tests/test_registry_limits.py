"""Cheap checks first: a hostile package costs milliseconds and kilobytes to refuse.

Real files on disk: sparse files of tens of GB (no disk used), configs describing absurd
models, manifests a parser chokes on. Memory is measured in a child process
(ru_maxrss), as a robot's loader would see it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_registry_helpers import write_manifest, write_package

from wmpo_core.registry.signing import generate_keypair, sign_package, verify_package
from wmpo_core.registry.verify import check_files, read_manifest

TESTS_DIR = Path(__file__).resolve().parent
HUGE = 40 << 30  # 40 GiB, sparse


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _hostile_package(pkg: Path) -> Path:
    """Unsigned: a 40 GiB (sparse) model file and a config asking for 20000 layers, all listed in the manifest."""
    write_package(pkg)
    config = json.loads((pkg / "config.json").read_text())
    (pkg / "config.json").write_text(json.dumps({**config, "num_layers": 20000, "hidden": 1 << 20}))
    manifest = write_manifest(pkg)
    with open(pkg / "model.safetensors", "r+b") as f:
        f.truncate(HUGE)
    manifest["files"]["model.safetensors"] = "0" * 64  # any hash: hashing 40 GiB to build the fixture takes a minute
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    return pkg


# the child reports (seconds, peak RSS growth in MB) of one verify_package call and its reasons
_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import test_registry_helpers  # registers the test model's shape rule, as a robot's policy modules would
    from wmpo_core.registry.signing import verify_package
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    report = verify_package(sys.argv[1], sys.argv[2])
    seconds = time.perf_counter() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"seconds": seconds, "grown_mb": grown_mb, "reasons": report.reasons}))
""")


def _measure(pkg: Path, public_key: Path) -> dict:
    env = {"PYTHONPATH": str(TESTS_DIR)}
    import os

    done = subprocess.run([sys.executable, "-c", _MEASURE, str(pkg), str(public_key)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unsigned_huge_package_refused_in_under_a_second_and_100_mb(tmp_path, keys):
    pkg = _hostile_package(tmp_path / "hostile")
    result = _measure(pkg, keys.public_key)
    print(f"unsigned 40 GiB sparse package, 20000-layer config: refused in {result['seconds'] * 1e3:.1f} ms, "
          f"peak RSS +{result['grown_mb']:.1f} MB: {result['reasons']}")
    assert result["reasons"] == ["signature.json: missing, the package is unsigned"]
    assert result["seconds"] < 1.0 and result["grown_mb"] < 100


def test_foreign_key_huge_package_refused_without_hashing(tmp_path, keys):
    pkg = _hostile_package(tmp_path / "foreign")
    other = generate_keypair(tmp_path / "other")
    manifest = json.loads((pkg / "manifest.json").read_text())
    from wmpo_core.registry.signing import key_id, load_private_key
    from wmpo_core.registry.verify import canonical_json_bytes

    private = load_private_key(other.private_key)
    import base64

    (pkg / "signature.json").write_text(json.dumps({
        "algorithm": "ed25519", "key_id": key_id(private.public_key()), "signed_file": "manifest.json",
        "signature": base64.b64encode(private.sign(canonical_json_bytes(manifest))).decode()}))
    result = _measure(pkg, keys.public_key)
    assert len(result["reasons"]) == 1 and "is not a trusted key" in result["reasons"][0], result
    assert result["seconds"] < 1.0 and result["grown_mb"] < 100, result


def test_size_and_count_caps_refuse_before_hashing(tmp_path, keys):
    from wmpo_core.registry.verify import PackageLimits

    pkg = write_package(tmp_path / "pkg")
    sign_package(pkg, keys.private_key)
    size = (pkg / "model.safetensors").stat().st_size
    t0 = time.perf_counter()
    report = verify_package(pkg, keys.public_key, limits=PackageLimits(max_file_bytes=size - 1))
    assert report.reasons == [f"model.safetensors: {size} bytes, more than the {size - 1} allowed per file"]
    report = verify_package(pkg, keys.public_key, limits=PackageLimits(max_files=2))
    assert len(report.reasons) == 1 and "lists 4 files, more than the 2 allowed" in report.reasons[0]
    report = verify_package(pkg, keys.public_key, limits=PackageLimits(max_manifest_bytes=100))
    assert len(report.reasons) == 1 and "more than the 100 allowed" in report.reasons[0]
    assert time.perf_counter() - t0 < 1.0
    for i in range(20):  # a directory full of junk is refused without listing it all
        (pkg / f"junk{i}").write_text("x")
    reasons = check_files(pkg, read_manifest(pkg), PackageLimits(max_files=4))
    assert reasons == [f"{pkg}: more than 10 entries in the package directory"]


def test_hashing_can_be_cancelled(tmp_path, keys):
    from wmpo_core.registry.verify import VerificationCancelled

    pkg = write_package(tmp_path / "pkg")
    with pytest.raises(VerificationCancelled):
        check_files(pkg, read_manifest(pkg), should_stop=lambda: True)


@pytest.mark.parametrize("case", ["key_id_list", "nan", "deep", "huge_reason"])
def test_malformed_manifests_and_signatures_refused_with_a_bounded_reason(tmp_path, keys, case):
    pkg = write_package(tmp_path / "pkg")
    sign_package(pkg, keys.private_key)
    if case == "key_id_list":
        record = json.loads((pkg / "signature.json").read_text())
        (pkg / "signature.json").write_text(json.dumps({**record, "key_id": []}))
        expected = "field 'key_id' must be a hex string"
    elif case == "nan":
        text = (pkg / "manifest.json").read_text()
        (pkg / "manifest.json").write_text(text.replace('"parent": null', '"parent": NaN'))
        expected = "NaN is not a JSON number"
    elif case == "deep":
        (pkg / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
        expected = "nested too deeply"
    else:
        manifest = json.loads((pkg / "manifest.json").read_text())
        manifest["files"]["x" * 500_000] = "nothex"
        (pkg / "manifest.json").write_text(json.dumps(manifest))
        expected = "has no lowercase hex sha256"
    report = verify_package(pkg, keys.public_key)  # never raises
    assert not report.ok and expected in " ".join(report.reasons), report.reasons
    assert len(str(report)) < 3000
    with pytest.raises(ValueError) as info:
        report.raise_for_refusal()
    assert len(str(info.value)) < 3000


def test_wmpo_verify_exits_1_with_a_short_message(tmp_path, keys):
    pkg = write_package(tmp_path / "pkg")
    sign_package(pkg, keys.private_key)
    record = json.loads((pkg / "signature.json").read_text())
    (pkg / "signature.json").write_text(json.dumps({**record, "key_id": []}))
    done = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "verify", str(pkg), "--public-key",
                           str(keys.public_key)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "field 'key_id' must be a hex string" in done.stderr
