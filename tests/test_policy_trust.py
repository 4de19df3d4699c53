"""Who may change the robot's policy: a policy_node process over real DDS (its own domain),
real signed packages in a real policy root, real hostile packages.

- the policy root is read-only and `policy_path` cannot be pointed outside it (nor through a symlink);
- a load must descend from the active version in the signed parent chain: a downgrade or an
  unrelated signed package is refused, going back is an operator's `~/rollback`;
- a rollback preempts a hostile load (a signed package whose 8 GiB file the node would hash)
  and is answered within one control period;
- a load still running when the node answers is reported as pending, `wmpo push` waits for
  the verdict, or exits with its own code and says how to check;
- every load, refusal and rollback is on `~/policy_events` and /diagnostics.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torch")

from policy_packages import build_package, make_keys  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import RosProbe, ros_env, start_node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from wmpo_ros.common import LATCHED_QOS, POLICY_VERSION_TOPIC  # noqa: E402

from wmpo_core.registry.push import push_local, push_package  # noqa: E402

pytestmark = pytest.mark.ros

DOMAIN_ID = 123
NODE = "/policy_node"
RATE_HZ = 10.0  # the simulated graph's control rate (config/sim.yaml): one period is 100 ms
EVENTS_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                        history=HistoryPolicy.KEEP_LAST, depth=32)


def _sign_anyway(pkg: Path, private_key_path: Path) -> None:
    """Sign a manifest without checking the files, as a compromised workstation could."""
    from wmpo_core.registry.signing import key_id, load_private_key
    from wmpo_core.registry.verify import canonical_json_bytes

    private = load_private_key(private_key_path)
    manifest = json.loads((pkg / "manifest.json").read_text())
    (pkg / "signature.json").write_text(json.dumps({
        "algorithm": "ed25519", "key_id": key_id(private.public_key()), "signed_file": "manifest.json",
        "signature": base64.b64encode(private.sign(canonical_json_bytes(manifest))).decode()}))


def _hostile(good: Path, out: Path, version: str, parent: str, private_key: Path) -> Path:
    """A trusted-signed child of `parent` whose manifest lists an 8 GiB (sparse) file with a wrong hash:
    the node hashes it all before refusing, unless a rollback stops it."""
    shutil.copytree(good, out)
    (out / "signature.json").unlink()
    with open(out / "blob.dat", "wb") as f:
        f.truncate(8 << 30)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(version=version, parent=parent)
    manifest["files"]["blob.dat"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    _sign_anyway(out, private_key)
    return out


class TrustRig:
    """A policy_node serving v0 from a policy root, with chain v0 <- v1 <- v2 <- v3 built beside it."""

    def __init__(self, tmp: Path) -> None:
        self.trusted, self.untrusted = make_keys(tmp / "keys")
        built = tmp / "built"
        chain = [None, "trust-v0", "trust-v1", "trust-v2"]
        self.chain = [build_package(built / f"v{i}", i, f"trust-v{i}", self.trusted, parent=chain[i])
                      for i in range(4)]
        self.rogue = build_package(built / "rogue", 9, "trust-rogue", self.trusted, parent=None)
        self.root = tmp / "robot" / "policies"
        self.outside = tmp / "elsewhere"
        first, _ = push_local(self.chain[0], self.root)
        os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)  # push_package's participant joins the rig's domain
        params = {
            "backend": "vla", "policy_path": str(first), "policy_root": str(self.root),
            "trusted_keys": str(self.trusted.public_key), "cameras": ["agentview"], "control_rate_hz": RATE_HZ,
            "vla.num_threads": 1, "load_timeout_s": 30.0,
        }
        self.proc = start_node("wmpo_ros.policy_node", params, DOMAIN_ID, tmp)
        self.probe = RosProbe(DOMAIN_ID, name="trust_probe")
        try:
            self.versions = self.probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
            self.events = self.probe.subscribe(String, f"{NODE}/policy_events", EVENTS_QOS)
            self.probe.wait_for_node_ready("policy_node", 60, self.proc)
            self.wait_version("trust-v0")
        except BaseException:
            self.close()
            raise

    def wait_version(self, version: str, timeout: float = 30.0) -> None:
        self.probe.wait_for(lambda: bool(self.versions) and self.versions.last().data == version, timeout,
                            f"{POLICY_VERSION_TOPIC} = {version}", self.proc)

    def set_param(self, name: str, value: Any) -> Any:  # noqa: F821 - typing only
        if isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
        request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        return self.probe.call(SetParameters, f"{NODE}/set_parameters", request).results[0]

    def policy_path(self) -> str:
        request = GetParameters.Request(names=["policy_path"])
        return self.probe.call(GetParameters, f"{NODE}/get_parameters", request).values[0].string_value

    def load(self, path: Path, timeout: float = 60.0) -> Trigger.Response:
        result = self.set_param("policy_path", str(path))
        assert result.successful, result.reason
        return self.probe.call(Trigger, f"{NODE}/load_policy", timeout=timeout)

    def rollback(self) -> Trigger.Response:
        return self.probe.call(Trigger, f"{NODE}/rollback", timeout=30)

    def event_messages(self) -> list[dict]:
        return [json.loads(m.data) for m in self.events]

    def diagnostics(self) -> dict[str, str]:
        status = self.probe.last_status("policy_node")
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def close(self) -> None:
        self.proc.stop()
        self.probe.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    old_domain = os.environ.get("ROS_DOMAIN_ID")
    rig = TrustRig(tmp_path_factory.mktemp("trust"))
    yield rig
    rig.close()
    if old_domain is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = old_domain


def test_policy_root_is_read_only_and_policy_path_stays_inside(rig):
    before = rig.policy_path()
    assert not rig.set_param("policy_root", str(rig.outside)).successful
    assert not rig.set_param("trusted_keys", str(rig.untrusted.public_key)).successful
    # read once at start: a change at run time was accepted and silently ignored
    assert not rig.set_param("vla.temperature", 1.0).successful
    rig.outside.mkdir(exist_ok=True)
    copy = rig.outside / "trust-v1"
    shutil.copytree(rig.chain[1], copy)  # a valid, signed child of the active version, in the wrong place
    refused = rig.set_param("policy_path", str(copy))
    assert not refused.successful and "outside the policy root" in refused.reason, refused.reason
    (rig.root / "sneaky").symlink_to(copy, target_is_directory=True)
    through_link = rig.set_param("policy_path", str(rig.root / "sneaky"))
    assert not through_link.successful and "outside the policy root" in through_link.reason
    assert rig.policy_path() == before
    assert rig.versions.last().data == "trust-v0"


def test_downgrade_and_unrelated_packages_refused_rollback_logged(rig):
    for pkg in (rig.chain[1], rig.rogue):
        push_local(pkg, rig.root)
    ok = rig.load(rig.root / "trust-v1")
    assert ok.success and ok.message.startswith("loaded trust-v1"), ok.message
    rig.wait_version("trust-v1")
    down = rig.load(rig.root / "trust-v0")  # signed, on the robot, but older: a downgrade
    assert not down.success and "does not descend from the active version trust-v1" in down.message, down.message
    assert "to go back use ~/rollback" in down.message
    rogue = rig.load(rig.root / "trust-rogue")
    assert not rogue.success and "does not descend" in rogue.message, rogue.message
    assert rig.versions.last().data == "trust-v1" and rig.policy_path() == str((rig.root / "trust-v1").resolve())

    back = rig.rollback()
    assert back.success and back.message == "rolled back from trust-v1 to trust-v0", back.message
    rig.wait_version("trust-v0")
    # v2's parent v1 is on the robot and signed: v2 descends from v0 through it
    push_local(rig.chain[2], rig.root)
    ok = rig.load(rig.root / "trust-v2")
    assert ok.success and ok.message.startswith("loaded trust-v2"), ok.message
    rig.wait_version("trust-v2")

    rig.probe.wait_for(lambda: len(rig.events) >= 5, 10, "an event per operation", rig.proc)
    events = rig.event_messages()
    kinds = [(e["kind"], e["ok"], e["version"]) for e in events]
    assert kinds[-5:] == [("load", True, "trust-v1"), ("load", False, "trust-v1"), ("load", False, "trust-v1"),
                          ("rollback", True, "trust-v0"), ("load", True, "trust-v2")], kinds
    assert len({e["id"] for e in events}) == len(events)
    rig.probe.wait_for(lambda: "loaded trust-v2" in rig.diagnostics().get("last_load", ""), 10,
                       "the last load on /diagnostics", rig.proc)
    diag = rig.diagnostics()
    assert diag["refused"] == "2" and diag["rollbacks"] == "1" and diag["policy_root"] == str(rig.root.resolve())
    log = rig.proc.output()
    assert "rollback requested" in log and "does not descend" in log


def test_rollback_preempts_a_hostile_load_within_one_control_period(rig):
    rig.wait_version("trust-v2")
    hostile = _hostile(rig.chain[3], rig.root / "trust-hostile", "trust-hostile", "trust-v2", rig.trusted.private_key)
    assert rig.set_param("policy_path", str(hostile)).successful
    node = rig.probe.node
    client = node.create_client(Trigger, f"{NODE}/load_policy")
    rollback = node.create_client(Trigger, f"{NODE}/rollback")  # discovered before the clock starts
    try:
        assert client.wait_for_service(timeout_sec=20) and rollback.wait_for_service(timeout_sec=20)
        reply = client.call_async(Trigger.Request())
        rig.probe.wait_for(lambda: "load requested" in rig.proc.output().split("trust-v2 from")[-1], 10,
                           "the hostile load to start", rig.proc)
        time.sleep(0.5)  # the loader is hashing the 8 GiB file now
        assert not reply.done(), reply.result()
        t0 = time.perf_counter()
        answer = rollback.call_async(Trigger.Request())
        while not answer.done() and time.perf_counter() - t0 < 30:
            time.sleep(0.001)
        answered_s = time.perf_counter() - t0
        back = answer.result()
        rig.probe.wait_for(reply.done, 10, "the hostile load's reply after the rollback", rig.proc)
    finally:
        node.destroy_client(client)
        node.destroy_client(rollback)
    print(f"rollback answered in {answered_s * 1e3:.1f} ms during a hostile load (period {1e3 / RATE_HZ:.0f} ms)")
    assert back.success and back.message == "rolled back from trust-v2 to trust-v0", back.message
    assert answered_s < 1.0 / RATE_HZ
    refused = reply.result()
    assert not refused.success and "cancelled by a rollback" in refused.message, refused.message
    rig.wait_version("trust-v0")
    time.sleep(0.5)
    assert rig.versions.last().data == "trust-v0"  # the cancelled load never swaps in afterwards


def test_pending_load_is_reported_as_pending_and_push_waits_for_the_verdict(rig, tmp_path):
    rig.wait_version("trust-v0")
    assert rig.set_param("load_timeout_s", 0.0).successful
    try:
        # v1 (on the robot) is a child of v0: the node answers "pending" at once, push waits for the verdict
        result = push_package(rig.chain[1], str(rig.root), rig.trusted.public_key, node=NODE, timeout_s=20, wait_s=60)
        assert result.load_message.startswith("loaded trust-v1"), result.load_message
        rig.wait_version("trust-v1")
        # no time to wait: `wmpo push` says the load is pending, how to check, and exits 3
        push_local(rig.chain[3], rig.root)
        env = ros_env(DOMAIN_ID)
        done = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "push", str(rig.chain[2]), "--to", str(rig.root),
                               "--public-key", str(rig.trusted.public_key), "--node", NODE, "--timeout", "20",
                               "--wait", "0"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 3, (done.returncode, done.stdout, done.stderr[-2000:])
        assert "gave no verdict within 0 s" in done.stderr and "ros2 topic echo" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        rig.wait_version("trust-v2")  # the verdict came later, as the message said it would
        assert rig.event_messages()[-1]["version"] == "trust-v2" and rig.event_messages()[-1]["ok"]
    finally:
        assert rig.set_param("load_timeout_s", 30.0).successful
