"""Pushing signed packages: atomic local copy, the remote protocol's commands, the `wmpo`
commands, and asking a real policy node (over DDS on loopback) to load the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_registry_helpers import write_package

from wmpo_core import cli
from wmpo_core.registry.push import (
    Destination,
    parse_destination,
    push_local,
    push_package,
    remote_cleanup_command,
    remote_push_commands,
)
from wmpo_core.registry.signing import generate_keypair, sign_package, verify_package
from wmpo_core.registry.verify import PackageError, manifest_file_hashes, read_manifest, sha256_file

ROS_DOMAIN = 100  # this file's own DDS domains: 100 and 101
TESTS_DIR = Path(__file__).resolve().parent
# `wmpo` in a child process that also knows the test model's shape rule (registered on import).
WMPO = [sys.executable, "-c", "import sys, test_registry_helpers; from wmpo_core.cli import main; sys.exit(main(sys.argv[1:]))"]


def _child_env(domain_id):
    from ros_helpers import ros_env

    env = ros_env(domain_id)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _signed(path, keys, **kw):
    pkg = write_package(path, **kw)
    sign_package(pkg, keys.private_key)
    return pkg


# ---------------------------------------------------------------- local push
def test_local_push_is_atomic_and_idempotent(tmp_path, keys):
    pkg = _signed(tmp_path / "pkg", keys, version="v7", parent="v6")
    robot = tmp_path / "robot" / "policies"
    result = push_package(pkg, str(robot), keys.public_key, node=None)
    assert result.policy_path == str((robot / "v7").resolve()) and not result.already_present
    assert sorted(p.name for p in robot.iterdir()) == ["v7"]  # no .incoming-* left behind
    assert verify_package(robot / "v7", keys.public_key).ok
    again = push_package(pkg, str(robot), keys.public_key, node=None)
    assert again.already_present and again.policy_path == result.policy_path
    # a different package claiming the same version never replaces the one on the robot
    impostor = _signed(tmp_path / "impostor", keys, version="v7", seed=3)
    before = sha256_file(robot / "v7" / "model.safetensors")
    with pytest.raises(FileExistsError, match="different package with version 'v7'"):
        push_package(impostor, str(robot), keys.public_key, node=None)
    assert sha256_file(robot / "v7" / "model.safetensors") == before
    assert sorted(p.name for p in robot.iterdir()) == ["v7"]


def test_refused_package_is_never_copied(tmp_path, keys):
    pkg = _signed(tmp_path / "pkg", keys)
    (pkg / "config.json").write_text(json.dumps({"model_type": "test-mlp", "in_dim": 6, "hidden": 9, "out_dim": 3}))
    robot = tmp_path / "robot"
    with pytest.raises(PackageError, match="config.json: sha256"):
        push_package(pkg, str(robot), keys.public_key, node=None)
    assert not robot.exists()
    # the copy itself is re-hashed before the rename: a mismatch leaves nothing behind
    with pytest.raises(PackageError, match="copy does not match the manifest"):
        push_local(pkg, robot)
    assert list(robot.iterdir()) == []


def test_parse_destination(tmp_path):
    assert parse_destination("robot1:/opt/wmpo/policies") == Destination("/opt/wmpo/policies", "robot1")
    assert parse_destination("ops@10.0.0.5:policies") == Destination("policies", "ops@10.0.0.5")
    assert parse_destination(str(tmp_path)) == Destination(str(tmp_path))
    assert parse_destination("./a:b") == Destination("./a:b")  # a path with a slash before ':' is local
    with pytest.raises(ValueError, match="remote directory"):
        parse_destination("robot1:")
    with pytest.raises(ValueError, match="cannot start with '-'"):  # would become an ssh option
        parse_destination("-oProxyCommand=id:policies")


# ---------------------------------------------------------------- remote protocol
def test_remote_push_commands(tmp_path, keys):
    pkg = _signed(tmp_path / "my pkg", keys, version="v2")
    hashes = manifest_file_hashes(read_manifest(pkg))
    steps = remote_push_commands(pkg, "ops@robot1", "/opt/wmpo/my policies", "v2", "abcd1234", hashes)
    incoming, final = "'/opt/wmpo/my policies/.incoming-v2-abcd1234'", "'/opt/wmpo/my policies/v2'"
    assert [s.argv[0] for s in steps] == ["ssh", "rsync", "ssh", "ssh"]
    assert steps[0].argv[:2] == ["ssh", "ops@robot1"]
    refuse = f"{{ test ! -e {final} || {{ echo '/opt/wmpo/my policies/v2 already exists' >&2; exit 1; }}; }}"
    assert steps[0].argv[2] == f"mkdir -p '/opt/wmpo/my policies' && {refuse} && mkdir {incoming}"
    assert steps[1].argv == [
        "rsync", "-a", "--checksum", "--protect-args", "-e", "ssh",
        f"{pkg}/", "ops@robot1:/opt/wmpo/my policies/.incoming-v2-abcd1234/",
    ]
    assert steps[2].argv[2] == f"cd {incoming} && sha256sum --check --quiet --strict -"
    assert steps[2].stdin == "".join(f"{h}  {n}\n" for n, h in sorted(hashes.items()))
    assert steps[3].argv[2] == f"sync && {refuse} && mv -T {incoming} {final} && sync"
    scp = remote_push_commands(pkg, "robot1", "~/policies", "v2", "abcd1234", hashes, transport="scp")
    assert scp[1].argv[:3] == ["scp", "-p", "-r"] and scp[1].argv[-1] == "robot1:policies/.incoming-v2-abcd1234/"
    assert sorted(a.rsplit("/", 1)[-1] for a in scp[1].argv[3:-1]) == sorted([*hashes, "manifest.json", "signature.json"])
    assert remote_cleanup_command("robot1", "~/policies", "v2", "abcd1234") == [
        "ssh", "robot1", "rm -rf policies/.incoming-v2-abcd1234"
    ]
    with pytest.raises(ValueError, match="use rsync for paths with spaces"):
        remote_push_commands(pkg, "robot1", "/opt/my policies", "v2", "t", hashes, transport="scp")
    assert remote_push_commands(pkg, "robot1", "~", "v2", "t", hashes)[0].argv[2].startswith("mkdir -p . &&")
    with pytest.raises(ValueError, match="transport"):
        remote_push_commands(pkg, "robot1", "/x", "v2", "t", hashes, transport="ftp")


def _run_as_robot(steps, pkg, robot_home):
    """Run the ssh steps' remote shell commands here (as the robot's shell would) and do the
    copy step with cp; returns the first failing step's purpose and stderr, or None."""
    for step in steps:
        if step.argv[0] == "ssh":
            done = subprocess.run(["sh", "-c", step.argv[-1]], cwd=robot_home, input=step.stdin, text=True, capture_output=True)
        else:
            target = step.argv[-1].split(":", 1)[1].rstrip("/")
            done = subprocess.run(["cp", "-r", f"{pkg}/.", str(robot_home / target)], capture_output=True)
        if done.returncode != 0:
            return f"{step.purpose}: {done.stderr}"
    return None


def test_remote_protocol_shell_commands_run(tmp_path, keys):
    pkg = _signed(tmp_path / "pkg", keys, version="v3")
    home = tmp_path / "robot_home"
    home.mkdir()
    hashes = manifest_file_hashes(read_manifest(pkg))
    assert _run_as_robot(remote_push_commands(pkg, "robot", "policies", "v3", "t1", hashes), pkg, home) is None
    assert sorted(p.name for p in (home / "policies").iterdir()) == ["v3"]
    assert verify_package(home / "policies" / "v3", keys.public_key).ok
    # a second push of the same version stops at the first step
    failed = _run_as_robot(remote_push_commands(pkg, "robot", "policies", "v3", "t2", hashes), pkg, home)
    assert failed is not None and failed.startswith("create") and "policies/v3 already exists" in failed
    # a corrupted transfer stops at the hash check, before the rename
    bad = {**hashes, "model.safetensors": "0" * 64}
    failed = _run_as_robot(remote_push_commands(pkg, "robot", "policies", "v4", "t3", bad), pkg, home)
    assert failed is not None and failed.startswith("re-hash")
    assert not (home / "policies" / "v4").exists()
    subprocess.run(["sh", "-c", remote_cleanup_command("robot", "policies", "v4", "t3")[-1]], cwd=home, check=True)
    assert sorted(p.name for p in (home / "policies").iterdir()) == ["v3"]


# ---------------------------------------------------------------- the wmpo commands
def test_cli_keygen_export_verify_push(tmp_path, capsys):
    assert cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    private = tmp_path / "keys" / "wmpo_policy_signing.pem"
    public = tmp_path / "keys" / "wmpo_policy_signing.pub.pem"
    assert "key id:" in capsys.readouterr().out
    assert cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    source = write_package(tmp_path / "run" / "policy", version="v5")
    out = tmp_path / "pkgs" / "v5"
    assert cli.main(["export", str(source), "--out", str(out), "--key", str(private), "--parent", "v4"]) == 0
    assert read_manifest(out)["parent"] == "v4" and (out / "signature.json").exists()
    assert not (source / "signature.json").exists()
    assert cli.main(["export", str(source), "--out", str(out), "--key", str(private)]) == 1
    assert "already exists" in capsys.readouterr().err
    mismatched = write_package(tmp_path / "run" / "mismatched", weights_config={"hidden": 5})
    assert cli.main(["export", str(mismatched), "--out", str(tmp_path / "pkgs" / "bad"), "--key", str(private)]) == 1
    assert "not signed: model.safetensors: tensor '0.bias' has shape [5]" in capsys.readouterr().err
    assert not (tmp_path / "pkgs" / "bad" / "signature.json").exists()

    assert cli.main(["verify", str(out), "--public-key", str(public)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(["push", str(out), "--to", str(tmp_path / "robot"), "--public-key", str(public), "--no-load"]) == 0
    assert f"version v5 at {tmp_path / 'robot' / 'v5'}" in capsys.readouterr().out

    (out / "norm_stats.json").write_text("{}")
    assert cli.main(["verify", str(out), "--public-key", str(public)]) == 1
    assert "norm_stats.json: sha256" in capsys.readouterr().err
    assert cli.main(["push", str(out), "--to", str(tmp_path / "robot2"), "--public-key", str(public), "--no-load"]) == 1
    assert "norm_stats.json: sha256" in capsys.readouterr().err and not (tmp_path / "robot2").exists()


# ---------------------------------------------------------------- load through the policy node
STAND_IN_POLICY_NODE = textwrap.dedent(
    """
    # The policy node's load contract: a `policy_path` parameter and a `~/load_policy` Trigger
    # service that verifies the package against the robot's own trusted key.
    import rclpy
    import test_registry_helpers  # noqa: F401  (shape rule of the test model)
    from rclpy.node import Node
    from std_srvs.srv import Trigger
    from wmpo_core.registry.signing import verify_package

    class PolicyNode(Node):
        def __init__(self):
            super().__init__("policy")
            self.declare_parameter("policy_path", "")
            self.declare_parameter("trusted_key", "")
            self.create_service(Trigger, "~/load_policy", self.load)

        def load(self, request, response):
            report = verify_package(self.get_parameter("policy_path").value, self.get_parameter("trusted_key").value)
            response.success = report.ok
            response.message = f"loaded version {report.version}" if report.ok else report.reason
            return response

    rclpy.init()
    rclpy.spin(PolicyNode())
    """
)


@pytest.mark.ros
def test_push_asks_policy_node_to_load(tmp_path, keys):
    pytest.importorskip("rclpy")
    from ros_helpers import NodeProcess

    script = tmp_path / "policy_node.py"
    script.write_text(STAND_IN_POLICY_NODE)
    env = _child_env(ROS_DOMAIN)
    good = _signed(tmp_path / "good", keys, version="v11")
    stranger = generate_keypair(tmp_path / "stranger")
    foreign = write_package(tmp_path / "foreign", version="v12")
    sign_package(foreign, stranger.private_key)
    robot = tmp_path / "robot"
    cmd = [sys.executable, str(script), "--ros-args", "-p", f"trusted_key:={keys.public_key}"]
    with NodeProcess(cmd, env, tmp_path / "policy_node.log") as node:
        push = [*WMPO, "push", "--to", str(robot), "--node", "/policy", "--timeout", "20"]
        done = subprocess.run([*push, str(good), "--public-key", str(keys.public_key)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr + node.output()
        assert "/policy: loaded version v11" in done.stdout
        # the workstation trusts the stranger's key, the robot does not: copied, then refused by the node
        done = subprocess.run(
            [*push, str(foreign), "--public-key", str(stranger.public_key)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 1
        assert "/policy/load_policy: node refused" in done.stderr and "is not a trusted key" in done.stderr, done.stderr
    assert sorted(p.name for p in robot.iterdir()) == ["v11", "v12"]


@pytest.mark.ros
def test_push_reports_missing_policy_node(tmp_path, keys):
    pytest.importorskip("rclpy")
    pkg = _signed(tmp_path / "pkg", keys)
    done = subprocess.run(
        [*WMPO, "push", str(pkg), "--to", str(tmp_path / "robot"),
         "--public-key", str(keys.public_key), "--node", "/nobody", "--timeout", "1"],
        env=_child_env(ROS_DOMAIN + 1), capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert "/nobody/set_parameters: service not available after 1 s" in done.stderr, done.stderr
    assert (tmp_path / "robot" / "v1").is_dir()  # the copy stands; loading can be retried


# ---------------------------------------------------------------- export of a real VLA policy
def test_export_vla_checkpoint_and_run(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.modeling_vla import VLAPolicy

    keys = generate_keypair(tmp_path / "keys")
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(num_layers=1, vision_layers=1))
    run = tmp_path / "run"
    for step in (5, 10):  # the newest checkpoint is the one exported
        checkpoint = run / "checkpoints" / f"step_{step:07d}"
        policy.save_pretrained(checkpoint)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"step": step, "train_episodes": ["ep_1", "ep_0"]}))
        with torch.no_grad():
            next(policy.parameters()).add_(1.0)
    out = tmp_path / "pkgs" / "from_run"
    assert cli.main(["export", str(run), "--out", str(out), "--key", str(keys.private_key), "--parent", "vla-base"]) == 0
    assert "signed checkpoint" in capsys.readouterr().out
    report = verify_package(out, keys.public_key)  # shapes checked by the VLA's own rule (model_type wmpo-vla)
    assert report.ok, str(report)
    assert any("tensor names and shapes match config.json" in c for c in report.checks)
    manifest = read_manifest(out)
    assert manifest["parent"] == "vla-base" and manifest["training_data"]["episode_ids"] == ["ep_0", "ep_1"]
    assert manifest["training_data"]["steps"] == 10
    loaded = load_package(out)
    first = next(iter(loaded.state_dict()))
    expected = VLAPolicy.from_pretrained(run / "checkpoints" / "step_0000010").state_dict()[first]
    assert torch.equal(loaded.state_dict()[first], expected)
    # a run directory with a finished package exports that package (re-signed, parent kept)
    shutil.copytree(out, run / "package_step0000010")
    (run / "package_step0000010" / "signature.json").unlink()
    again = tmp_path / "pkgs" / "from_package"
    assert cli.main(["export", str(run), "--out", str(again), "--key", str(keys.private_key)]) == 0
    assert read_manifest(again)["version"] == manifest["version"] and verify_package(again, keys.public_key).ok
    assert cli.main(["export", str(tmp_path / "keys"), "--out", str(tmp_path / "x"), "--key", str(keys.private_key)]) == 1
    assert "neither a package" in capsys.readouterr().err
    # a bad key is refused before anything is written: the retry with the right key is not blocked
    retry = tmp_path / "pkgs" / "retry"
    assert cli.main(["export", str(run), "--out", str(retry), "--key", str(tmp_path / "missing.pem")]) == 1
    assert "not a readable PEM private key" in capsys.readouterr().err and not retry.exists()
    assert cli.main(["export", str(run), "--out", str(retry), "--key", str(keys.private_key)]) == 0
    assert verify_package(retry, keys.public_key).ok
