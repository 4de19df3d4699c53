"""One loader for signed policy packages (wmpo_core.policy.loading), and a registry that builds no model.

The node, `wmpo eval` and `wmpo compare` load through the same core functions; the registry only
verifies bytes, hashes, manifests and signatures (its modules import no model code, checked in a
fresh interpreter where nothing else was imported first).
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_policy_vla import single_thread  # noqa: F401  (autouse fixture)

from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.loading import load_policy, load_verified_policy
from wmpo_core.policy.modeling_vla import VLAPolicy
from wmpo_core.registry.package import save_package
from wmpo_core.registry.signing import generate_keypair, sign_package
from wmpo_core.registry.verify import PackageError


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(policy, signed package, public key of its signer, public key of someone else)."""
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(num_layers=1))
    pkg = save_package(policy, root / "v1", data=["ep_000"])
    ours, theirs = generate_keypair(root / "ours"), generate_keypair(root / "theirs")
    sign_package(pkg, ours.private_key)
    return policy, pkg, ours.public_key, theirs.public_key


def test_load_verified_policy_loads_a_package_signed_by_a_trusted_key(signed):
    policy, pkg, ours, _ = signed
    loaded = load_verified_policy(pkg, str(ours))
    assert loaded.version == policy.version and loaded.manifest["version"] == policy.version and not loaded.training
    for (name, a), b in zip(policy.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the same loader behind load_policy when keys are given; a comma-separated list of keys works too
    assert load_policy(pkg, trusted_keys=f"{ours}, {ours}").version == policy.version


def test_load_verified_policy_refuses_unsigned_untrusted_and_keyless(signed, tmp_path):
    _, pkg, ours, theirs = signed
    with pytest.raises(PackageError, match="trusted_keys is empty"):
        load_verified_policy(pkg, " , ")
    with pytest.raises(PackageError, match="signature.json"):
        load_verified_policy(pkg, str(theirs))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(pkg, unsigned, ignore=shutil.ignore_patterns("signature.json"))
    with pytest.raises(PackageError, match="unsigned"):
        load_verified_policy(unsigned, str(ours))
    with pytest.raises(PackageError, match="unsigned"):
        load_policy(unsigned, trusted_keys=str(ours))
    assert load_policy(unsigned).version == load_policy(pkg).version  # without keys: hashes and shapes only


def _fresh_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_registry_verifies_a_package_without_importing_model_code(signed):
    """Importing and running the registry (signature, hashes, shapes) loads no policy module, no torch:
    without a registered shape rule it refuses the weights, naming the model type, instead of building a model."""
    _, pkg, ours, _ = signed
    proc = _fresh_python(
        "import sys\n"
        "import wmpo_core.registry.commands.keygen, wmpo_core.registry.commands.export\n"
        "import wmpo_core.registry.commands.verify, wmpo_core.registry.commands.push\n"
        "import wmpo_core.registry.package, wmpo_core.registry.push\n"
        "from wmpo_core.registry.signing import verify_package\n"
        f"report = verify_package({str(pkg)!r}, [{str(ours)!r}])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m.startswith('wmpo_core.policy')))\n"
        "print(report.ok, report.reasons)\n")
    assert proc.returncode == 0, proc.stderr
    loaded, verdict = proc.stdout.strip().splitlines()
    assert loaded == "[]"
    assert verdict.startswith("False") and "no shape rule known for field 'model_type' = 'wmpo-vla'" in verdict


def test_verify_command_checks_the_shapes_in_a_fresh_process(signed):
    """`wmpo verify` in a new process still passes a valid VLA package: the command makes sure the shipped
    models' shape rules are registered (the registry no longer imports them)."""
    _, pkg, ours, _ = signed
    cmd = [sys.executable, "-m", "wmpo_core.cli", "verify", str(pkg), "--public-key", str(ours)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
