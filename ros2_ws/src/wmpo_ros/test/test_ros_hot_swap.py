"""Hot swap of the learned policy over real DDS: a policy_node process serving a signed VLA
package at the control rate, packages pushed with wmpo_core.registry.push (copy + SetParameters
+ ~/load_policy), refused packages, rollback, and 20 pushes in a row under load.

A camera process publishes one of five fixed frames every control period on a nominal
stamp grid (frame = stamp // period mod 5), so every chunk names, by its header stamp, the
frame it was computed from, and each package's exact output for each frame is known in
advance: a chunk proves which fully loaded version produced it. The camera logs how late
it published each frame, so a gap the camera caused (an overloaded machine) is told apart
from a gap the node caused.

`SwapRig` is also what bench/bench_swap.py runs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torch")

from policy_packages import (  # noqa: E402
    BAD_KINDS,
    BAD_REASONS,
    INSTRUCTION,
    build_package,
    camera_frames,
    expected_chunks,
    make_bad_package,
    make_keys,
)
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from ros_helpers import NodeProcess, RosProbe, ros_env, start_node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    ACTION_CHUNK_TOPIC,
    COMMAND_QOS,
    INSTRUCTION_TOPIC,
    LATCHED_QOS,
    POLICY_VERSION_TOPIC,
    stamp_to_ns,
    trajectory_to_chunk,
)

from wmpo_core.registry.push import PolicyLoadError, push_local, push_package, request_policy_load  # noqa: E402

pytestmark = pytest.mark.ros

NODE_MODULE = "wmpo_ros.policy_node"
NODE = "/policy_node"
RATE_HZ = 20.0
REPLAN = 4  # a chunk every 4 control periods (0.2 s)
N_GOOD = 4
DOMAIN_ID = 102


# The camera: frames from an .npy file, one per period on the stamp grid, each line of output
# "<stamp ns> <ms late>". A separate process, as a real camera node is, so that the test
# process's own work (hashing, copying, DDS discovery of each push) never delays a frame.
CAMERA_SCRIPT = r"""
import sys, time
import numpy as np, rclpy
from sensor_msgs.msg import Image
from wmpo_ros.common import IMAGE_QOS, image_topic, ns_to_stamp, numpy_to_image
frames, period_ns = np.load(sys.argv[1]), int(sys.argv[2])
rclpy.init()
node = rclpy.create_node("swap_rig_camera")
pub = node.create_publisher(Image, image_topic("agentview"), IMAGE_QOS)
grid = period_ns * len(frames)
stamp0 = (time.time_ns() // grid + 2) * grid  # frame = (stamp // period) % len(frames)
i = 0
try:
    while rclpy.ok():
        stamp = stamp0 + i * period_ns
        delay = (stamp - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        pub.publish(numpy_to_image(frames[i % len(frames)], ns_to_stamp(stamp), "agentview"))
        print(stamp, round((time.time_ns() - stamp) / 1e6, 2), flush=True)
        i += 1
except KeyboardInterrupt:
    pass
"""


_LOG_LINE = re.compile(r"^\[\w+\] \[(\d+\.\d+)\] \[policy_node\]: (.*)$")
_LOAD_START = re.compile(r"^(load|rollback) requested")
_LOAD_END = re.compile(r"^(loaded |refused |version \S+ is already active|rolled back |no previous version|load failed|rollback failed)")

# The arm's view: when each chunk arrives in a process that does nothing else, "<stamp ns> <arrival ns>".
ARM_SCRIPT = r"""
import time
import rclpy
from rclpy.executors import ExternalShutdownException
from trajectory_msgs.msg import JointTrajectory
from wmpo_ros.common import ACTION_CHUNK_TOPIC, COMMAND_QOS, stamp_to_ns
rclpy.init()
node = rclpy.create_node("swap_rig_arm")
node.create_subscription(JointTrajectory, ACTION_CHUNK_TOPIC,
                         lambda m: print(stamp_to_ns(m.header.stamp), time.time_ns(), flush=True), COMMAND_QOS)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


def good_version(i: int) -> str:
    """Version id of good package i."""
    return f"vla-swap-{i}"


class SwapPackages:
    """Keys, N good signed packages (with, once `compute_expected` ran, their exact outputs on
    the rig's frames) and one bad package per kind. `config` overrides the small test model.

    The good packages' signed parents form a ring (good i's parent is good i-1, good 0's the
    last one), and the rig puts all of them in the robot's policy root: every good package
    then descends from every other (the node follows the chain through the root), so these
    tests may push them in any order. tests/test_policy_trust.py checks the ordering itself."""

    def __init__(self, root: Path, n_good: int = N_GOOD, **config) -> None:
        self.root = root
        self.trusted, self.untrusted = make_keys(root / "keys")
        self.good = [build_package(root / "built" / f"good{i}", i, good_version(i), self.trusted,
                                   parent=good_version((i - 1) % n_good), **config)
                     for i in range(n_good)]
        self.bad = {kind: make_bad_package(kind, self.good[0], root / "built" / f"bad-{kind}", self.trusted,
                                           self.untrusted) for kind in BAD_KINDS}
        self.frames = camera_frames(5)  # 5 frames, chunks every 4 periods: chunks see every frame
        self.expected: dict[str, list[np.ndarray]] = {}

    def compute_expected(self) -> None:
        """Each good package's output for each frame (run while the node starts)."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)  # the node runs one thread too; also far faster on a busy machine
        try:
            self.expected = {good_version(i): expected_chunks(p, self.frames) for i, p in enumerate(self.good)}
        finally:
            torch.set_num_threads(before)
        for f in range(len(self.frames)):  # every version is told apart by every frame
            outs = [self.expected[v][f] for v in self.expected]
            assert all(not np.array_equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1:]), f"frame {f}"

    def versions_matching(self, chunk: np.ndarray, frame: int) -> list[str]:
        """The good versions whose exact output for `frame` is `chunk`."""
        return [v for v, out in self.expected.items() if np.allclose(chunk, out[frame], rtol=0, atol=1e-9)]


class SwapRig:
    """A policy_node process serving packages.good[0], fed frames at the control rate by this process."""

    def __init__(self, packages: SwapPackages, workdir: Path, domain_id: int, rate_hz: float = RATE_HZ,
                 replan: int = REPLAN, load_timeout_s: float = 20.0) -> None:
        self.packages = packages
        self.period_ns = int(round(1e9 / rate_hz))
        self.replan = replan
        self.chunk = int(json.loads((packages.good[0] / "config.json").read_text())["chunk_size"])
        self.robot_dir = workdir / "robot_policies"
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)  # request_policy_load joins the rig's domain
        first = push_package(packages.good[0], str(self.robot_dir), packages.trusted.public_key, node=None)
        for pkg in packages.good[1:]:  # the ring of parents is on the robot (see SwapPackages)
            push_local(pkg, self.robot_dir)
        self.probe = RosProbe(domain_id, name="swap_rig")
        self.chunks = self.probe.subscribe(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        self.versions = self.probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
        self.instruction_pub = self.probe.publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
        params = {
            "backend": "vla", "policy_path": first.policy_path, "trusted_keys": str(packages.trusted.public_key),
            "cameras": ["agentview"], "control_rate_hz": rate_hz, "replan_every": replan, "vla.num_threads": 1,
            "load_timeout_s": load_timeout_s, "policy_root": str(self.robot_dir),
        }
        self.proc = start_node(NODE_MODULE, params, domain_id, workdir)
        np.save(workdir / "frames.npy", np.stack(packages.frames))
        self.camera = NodeProcess([sys.executable, "-c", CAMERA_SCRIPT, str(workdir / "frames.npy"), str(self.period_ns)],
                                  ros_env(domain_id), workdir / "camera.log")
        self.arm = NodeProcess([sys.executable, "-c", ARM_SCRIPT], ros_env(domain_id), workdir / "arm.log")
        try:
            packages.compute_expected()
            self.probe.wait_for_node_ready("policy_node", 60, self.proc)
            self.instruction_pub.publish(String(data=INSTRUCTION))
            self.wait_chunks(3, 60)
        except BaseException:
            self.close()
            raise

    def frame_of(self, stamp_ns: int) -> int:
        """The frame the camera published with this stamp."""
        return (stamp_ns // self.period_ns) % len(self.packages.frames)

    @staticmethod
    def _read_pairs(proc: NodeProcess) -> dict[int, float]:
        out = {}
        for line in proc.output().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                out[int(parts[0])] = float(parts[1])
        return out

    def camera_lateness_ms(self) -> dict[int, float]:
        """stamp -> how late the camera published that frame (ms)."""
        return self._read_pairs(self.camera)

    def arrival_gaps(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Gaps between consecutive chunks as they arrive at the arm process, in control periods (chunks the arm
        did not get are left out, so a loss shows as a longer gap)."""
        self.wait_arm_caught_up(start, stop)
        arrived = self._read_pairs(self.arm)
        stamps = [stamp_to_ns(m.header.stamp) for m in list(self.chunks)[start:stop]]
        times = np.array([arrived[s] for s in stamps if s in arrived])
        return np.diff(times) / self.period_ns

    def wait_arm_caught_up(self, start: int = 0, stop: int | None = None) -> None:
        """Wait until the arm process has logged the newest chunk of [start, stop) the probe received, or a later
        one. Not every chunk: the command QoS keeps the last 10, so an arm process starved for seconds on a
        loaded machine drops older chunks (as a real arm would, keeping the newest), and waiting for those
        would never end."""
        chunks = list(self.chunks)[start:stop]
        if not chunks:
            return
        newest = stamp_to_ns(chunks[-1].header.stamp)
        self.probe.wait_for(lambda: max(self._read_pairs(self.arm), default=0) >= newest, 60,
                            "the arm process to log the newest chunk", self.arm)

    # -- observing ----------------------------------------------------------------------

    def wait_chunks(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` more chunks arrived."""
        target = len(self.chunks) + n
        self.probe.wait_for(lambda: len(self.chunks) >= target, timeout, f"{n} more action chunks", self.proc)

    def wait_version(self, version: str, timeout: float = 30.0) -> None:
        """Wait until the latched version topic says `version`."""
        self.probe.wait_for(lambda: bool(self.versions) and self.versions.last().data == version, timeout,
                            f"{POLICY_VERSION_TOPIC} = {version}", self.proc)

    def chunk_versions(self, start: int = 0, stop: int | None = None) -> list[tuple[int, list[str]]]:
        """(frame, matching good versions) of each received chunk in [start, stop)."""
        out = []
        for msg in list(self.chunks)[start:stop]:
            frame = self.frame_of(stamp_to_ns(msg.header.stamp))
            out.append((frame, self.packages.versions_matching(trajectory_to_chunk(msg), frame)))
        return out

    def stamp_gaps(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Observation-stamp gaps between consecutive chunks, in control periods."""
        stamps = np.array([stamp_to_ns(m.header.stamp) for m in list(self.chunks)[start:stop]], dtype=np.int64)
        return np.diff(stamps) / self.period_ns

    def load_windows(self) -> list[tuple[int, int]]:
        """(start, end) wall-clock ns of every load / rollback the node ran, from its log."""
        starts, ends = [], []
        for line in self.proc.output().splitlines():
            match = _LOG_LINE.match(line)
            if match is None:
                continue
            t = int(round(float(match.group(1)) * 1e9))
            if _LOAD_START.match(match.group(2)):
                starts.append(t)
            elif _LOAD_END.match(match.group(2)):
                ends.append(t)
        return list(zip(starts, ends, strict=False))

    def long_gaps(self, start: int = 0, stop: int | None = None) -> dict[str, list[tuple[int, float]]]:
        """Stamp gaps longer than replan + 1 periods as (stamp, periods), by cause.

        "swap": the node was loading or swapping (from a request until one replan interval
        after its outcome, which covers the first inference of a new policy); "camera": a
        frame the node should have planned from (the due one or the next) was published more
        than half a period late; "background": neither (the machine stalled the node).
        """
        lateness = self.camera_lateness_ms()
        windows = self.load_windows()
        after = (self.replan + 1) * self.period_ns
        stamps = [stamp_to_ns(m.header.stamp) for m in list(self.chunks)[start:stop]]
        out: dict[str, list[tuple[int, float]]] = {"swap": [], "camera": [], "background": []}
        for a, b in itertools.pairwise(stamps):
            gap = (b - a) / self.period_ns
            if gap <= self.replan + 1:
                continue
            due = [a + k * self.period_ns for k in (self.replan, self.replan + 1)]
            if any(s0 <= b and due[0] <= s1 + after for s0, s1 in windows):
                out["swap"].append((a, gap))
            elif any(lateness.get(s, 0.0) > self.period_ns / 2e6 for s in due):
                out["camera"].append((a, gap))
            else:
                out["background"].append((a, gap))
        return out

    def policy_path(self) -> str:
        """The node's `policy_path` parameter now."""
        request = GetParameters.Request(names=["policy_path"])
        return self.probe.call(GetParameters, f"{NODE}/get_parameters", request).values[0].string_value

    # -- acting -------------------------------------------------------------------------

    def push_good(self, pkg: Path, timeout: float = 30.0, connected: bool = False) -> str:
        """Push a good package; returns the node's answer.

        Default: the `wmpo push` path (verify here, copy atomically into the robot folder,
        then a new ROS context sets policy_path and calls ~/load_policy). `connected`: the
        same copy and the same two calls from the rig's own, already discovered, participant.
        """
        if not connected:
            result = push_package(pkg, str(self.robot_dir), self.packages.trusted.public_key, node=NODE,
                                  timeout_s=timeout)
            return result.load_message or ""
        final, _ = push_local(pkg, self.robot_dir)
        ok, message = self.load(final, timeout)
        assert ok, f"{pkg.name}: refused: {message}"
        return message

    def push_bad(self, pkg: Path, timeout: float = 30.0, connected: bool = False) -> str:
        """A bad package that reached the robot folder anyway; returns the node's refusal (fails if accepted)."""
        dest = self.robot_dir / f"{pkg.name}-{time.monotonic_ns()}"
        shutil.copytree(pkg, dest)
        if connected:
            ok, message = self.load(dest, timeout)
        else:
            try:
                ok, message = True, request_policy_load(NODE, str(dest), timeout_s=timeout)
            except PolicyLoadError as exc:
                ok, message = False, str(exc)
        assert not ok, f"{pkg.name}: the node accepted a bad package: {message}"
        return message

    def load(self, path: Path, timeout: float = 30.0) -> tuple[bool, str]:
        """Set the node's policy_path and call ~/load_policy from the rig's participant: (success, message)."""
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path))
        request = SetParameters.Request(parameters=[Parameter(name="policy_path", value=value)])
        result = self.probe.call(SetParameters, f"{NODE}/set_parameters", request, timeout).results[0]
        assert result.successful, result.reason
        response = self.probe.call(Trigger, f"{NODE}/load_policy", timeout=timeout)
        return response.success, response.message

    def rollback(self) -> Trigger.Response:
        """Call ~/rollback."""
        return self.probe.call(Trigger, f"{NODE}/rollback", timeout=30)

    def close(self) -> None:
        """Stop the camera, the arm and the node, close the probe."""
        self.camera.stop()
        self.arm.stop()
        self.proc.stop()
        self.probe.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    packages = SwapPackages(tmp_path_factory.mktemp("swap_pkgs"))
    workdir = tmp_path_factory.mktemp("swap_rig")
    old_domain = os.environ.get("ROS_DOMAIN_ID")
    rig = SwapRig(packages, workdir, DOMAIN_ID)
    yield rig
    rig.close()
    if old_domain is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = old_domain


def _assert_planned_during_loads(rig: SwapRig) -> int:
    """Inference never waits for a load, at any machine load. With X one replan interval: for every
    load (from its request to its outcome in the node's own log) during which the camera published
    a frame stamped more than X after the load began at least 3X before it ended, a chunk planned
    from a frame stamped more than X after the load began reached the arm more than X before the
    load ended (a blocked inference plans nothing until the load ends; waiting X lets a loader
    that started late take no credit). Returns the (begin, end) of the loads this checked."""
    x = rig.replan * rig.period_ns
    published = {stamp: stamp + int(late_ms * 1e6) for stamp, late_ms in rig.camera_lateness_ms().items()}
    rig.wait_arm_caught_up()
    arrived = rig._read_pairs(rig.arm)
    checked = []
    for begin, end in rig.load_windows():
        if not any(begin + x < s and p <= end - 3 * x for s, p in published.items()):
            continue
        checked.append((begin, end))
        planned = [s for s, t in arrived.items() if begin + x < s and t < end - x]
        assert planned, f"no chunk planned during the {(end - begin) / 1e6:.0f} ms load at {begin}: inference waited"
    return checked


def _assert_no_gap(rig: SwapRig, start: int, stop: int | None = None) -> None:
    gaps = rig.stamp_gaps(start, stop)
    assert len(gaps) > 0 and gaps.min() >= rig.replan - 0.5, gaps.tolist()
    assert len(rig.load_windows()) > 0
    checked = _assert_planned_during_loads(rig)
    # A chunk every `replan` periods. Loading competes for the CPU, so a chunk may come late, but
    # never so late that the arm runs out of planned actions: a chunk covers `chunk` periods from
    # its observation, so the next one must be planned from a frame at most chunk - 1 periods
    # later (one period left for inference). A shared 2-core CI machine also stalls the node away
    # from any load (seen: 15 periods with no load running); then the bound is that stall, measured
    # in the same run, plus one replan interval. A swap that blocks inference for the whole load
    # (0.5-1 s here: 10-20 periods) still fails on a quiet machine. A load during which planning
    # was shown to go on (above) did not block inference: a long gap in it is the machine's CPU
    # share (seen: 9 periods at load 7.7 on two cores), so only loads too short for that check
    # are held to the bound.
    long = rig.long_gaps(start, stop)
    elsewhere = [gap for _, gap in long["camera"] + long["background"]]
    bound = max([rig.chunk - 1.0] + [gap + rig.replan for gap in elsewhere])
    after = (rig.replan + 1) * rig.period_ns
    too_long = [(stamp, gap) for stamp, gap in long["swap"]
                if gap > bound and not any(b - after <= stamp <= e for b, e in checked)]
    assert not too_long, f"gaps (stamp, periods) longer than {bound} periods during a load: {long}"
    if long["swap"] or elsewhere:
        print(f"gaps (stamp, periods) longer than {rig.replan + 1} periods, all within {bound}: {long}")
    print(f"{len(checked)} of {len(rig.load_windows())} loads long enough to show planning during them: it went on in each")


def test_push_refuse_and_rollback(rig):
    pk = rig.packages
    v0, v1 = good_version(0), good_version(1)
    rig.wait_version(v0)
    start = len(rig.chunks)
    rig.wait_chunks(2 * len(pk.frames))
    before = rig.chunk_versions(start)
    assert all(match == [v0] for _, match in before), before
    n_versions = len(rig.versions)
    active_path = rig.policy_path()
    assert active_path == str(rig.robot_dir / v0)

    for kind in BAD_KINDS:
        reason = rig.push_bad(pk.bad[kind])
        assert BAD_REASONS[kind] in reason, (kind, reason)
        assert rig.policy_path() == active_path, f"{kind}: policy_path not restored"
    after_start = len(rig.chunks)
    rig.wait_chunks(2 * len(pk.frames))
    # a refused package changes nothing: same frames in, the very same chunks out, no new version
    after = rig.chunk_versions(after_start)
    assert all(match == [v0] for _, match in after), after
    assert {f for f, _ in after} == set(range(len(pk.frames))) == {f for f, _ in before}
    assert len(rig.versions) == n_versions and rig.versions.last().data == v0

    message = rig.push_good(pk.good[1])
    assert message.startswith(f"loaded {v1}") and f"previous {v0} kept for rollback" in message, message
    rig.wait_version(v1)
    rig.wait_chunks(2 * len(pk.frames))
    response = rig.rollback()
    assert response.success and response.message == f"rolled back from {v1} to {v0}", response.message
    rig.wait_version(v0)
    rig.wait_chunks(2 * len(pk.frames))
    assert rig.policy_path() == active_path
    again = rig.rollback()
    assert not again.success and "no previous version" in again.message

    # every chunk from one fully loaded version, in the order v0 .. v1 .. v0, without a gap
    sequence = [match for _, match in rig.chunk_versions(start)]
    assert all(len(m) == 1 for m in sequence), sequence
    runs = [m[0] for i, m in enumerate(sequence) if i == 0 or m != sequence[i - 1]]
    assert runs == [v0, v1, v0], runs
    _assert_no_gap(rig, start)
    assert [m.data for m in rig.versions][-3:] == [v0, v1, v0]
    assert rig.proc.alive()


def test_long_load_answers_pending_then_reports(rig):
    """With load_timeout_s = 0 the service answers "pending" (not a success) at once; the swap is then seen on the
    version topic."""
    pk = rig.packages
    serving = rig.versions.last().data
    target = next(i for i in range(N_GOOD) if good_version(i) != serving)
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.0)
    request = SetParameters.Request(parameters=[Parameter(name="load_timeout_s", value=value)])
    assert rig.probe.call(SetParameters, f"{NODE}/set_parameters", request).results[0].successful
    try:
        final, _ = push_local(pk.good[target], rig.robot_dir)
        ok, message = rig.load(final)
        assert not ok and message.startswith("pending: load #") and f"({final}) not finished after 0 s" in message, \
            message
        rig.wait_version(good_version(target))
        ok, message = rig.load(rig.robot_dir / "no-such-package")
        # Refused in microseconds: the answer is "pending" or, when the loader finished first, the refusal
        # itself (a race either way); the refusal is in the node log in both cases.
        assert not ok and (message.startswith("pending") or "not a package directory" in message), message
        rig.probe.wait_for(lambda: "no-such-package: not a package directory" in rig.proc.output(), 20,
                           "the refusal in the node log", rig.proc)
        assert rig.versions.last().data == good_version(target)
    finally:
        request.parameters[0].value.double_value = 20.0
        rig.probe.call(SetParameters, f"{NODE}/set_parameters", request)


def test_node_serves_while_a_load_runs(rig, tmp_path):
    """A slow load never blocks the node's executor: while the ~/load_policy reply is pending, the
    node answers parameter requests and keeps planning chunks. The package (a 270 MB model, 0.8-1.5 s
    to verify and build here) needs a camera the node does not receive, so it is refused only once
    it is built, and the serving policy stays."""
    serving = rig.versions.last().data
    big = build_package(tmp_path / "big", 7, "big-1", rig.packages.trusted, parent=serving, hidden_size=768, num_layers=8,
                        intermediate_size=3072, num_heads=12, num_kv_heads=12, cameras=["agentview", "wrist"])
    final, _ = push_local(big, rig.robot_dir)
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(final))
    request = SetParameters.Request(parameters=[Parameter(name="policy_path", value=value)])
    assert rig.probe.call(SetParameters, f"{NODE}/set_parameters", request).results[0].successful
    start = len(rig.chunks)
    windows_before = len(rig.load_windows())
    node = rig.probe.node
    client, params = node.create_client(Trigger, f"{NODE}/load_policy"), node.create_client(GetParameters, f"{NODE}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=20.0) and params.wait_for_service(timeout_sec=20.0)
        reply = client.call_async(Trigger.Request())
        answered = []  # wall-clock times of parameter answers received while the load reply was pending
        deadline = time.monotonic() + 60.0
        while not reply.done():
            assert time.monotonic() < deadline, "no ~/load_policy reply within 60 s"
            answer = params.call_async(GetParameters.Request(names=["policy_path"]))
            while not answer.done() and not reply.done() and time.monotonic() < deadline:
                time.sleep(0.002)
            if answer.done():
                answered.append(time.time_ns())
        response = reply.result()
    finally:
        node.destroy_client(client)
        node.destroy_client(params)
    assert not response.success and "needs camera(s) ['wrist']" in response.message, response.message
    assert rig.versions.last().data == serving and rig.policy_path() == str(rig.robot_dir / serving)
    rig.probe.wait_for(lambda: len(rig.load_windows()) > windows_before, 10, "the load in the node log", rig.proc)
    begin, end = rig.load_windows()[-1]
    # One request is in flight at a time, so of the answers received inside the load at most the first
    # was served before it began: three prove the executor served two while it ran, at any speed.
    during = [t for t in answered if begin < t < end]
    assert len(during) >= 3, (f"{len(during)} parameter answers during a {(end - begin) / 1e6:.0f} ms load "
                              f"({len(answered)} while the reply was pending): the load blocked the executor")
    rig.wait_chunks(4)
    _assert_no_gap(rig, start)
    print(f"load of {(end - begin) / 1e6:.0f} ms: {len(during)} parameter answers during it")


def test_twenty_pushes_under_load(rig):
    """20 pushes back to back (copy into the robot folder, policy_path, ~/load_policy), from the rig's
    own participant: each `wmpo push` process is a new DDS participant, and on a loaded 2-core
    machine its discovery alone can delay the node by a few periods (bench/bench_swap.py shows
    both); here every gap is the node's own doing while it loads and swaps."""
    pk = rig.packages
    goods = [2, 3, 1, 0] * 3
    pushes: list[tuple[str, object]] = []
    for i in range(10):  # 20 pushes: good and bad alternating, every bad kind twice
        pushes.append(("good", goods[i]))
        pushes.append(("bad", BAD_KINDS[i % len(BAD_KINDS)]))
    start = len(rig.chunks)
    first_version = len(rig.versions)
    t0 = time.monotonic()
    for what, which in pushes:
        if what == "good":
            message = rig.push_good(pk.good[which], connected=True)
            assert message.startswith(f"loaded {good_version(which)}"), message
        else:
            assert BAD_REASONS[which] in rig.push_bad(pk.bad[which], connected=True)
    seconds = time.monotonic() - t0
    rig.wait_version(good_version(goods[9]))
    rig.wait_chunks(4)

    swapped_to = [good_version(goods[i]) for i in range(10)]
    assert [m.data for m in list(rig.versions)[first_version:]] == swapped_to
    matches = rig.chunk_versions(start)
    bad = [(i, f, m) for i, (f, m) in enumerate(matches) if len(m) != 1]
    assert not bad, f"chunks from no (or several) fully loaded versions: {bad[:5]}"
    sequence = [m[0] for _, m in matches]
    runs = [v for i, v in enumerate(sequence) if i == 0 or v != sequence[i - 1]]
    # versions serve in the order they were swapped in (one may serve no chunk if the next swap came
    # within a replan interval), ending with the last one pushed
    remaining = iter(swapped_to)
    assert all(v in remaining for v in runs[1:]) and runs[-1] == swapped_to[-1], (runs, swapped_to)
    _assert_no_gap(rig, start)
    arrival = rig.arrival_gaps(start)
    print(f"20 pushes in {seconds:.1f} s; {len(matches)} chunks; stamp gap max {rig.stamp_gaps(start).max():.2f} "
          f"periods; arrival gap at the arm max {arrival.max():.2f}, p99 {np.percentile(arrival, 99):.2f} periods")
    assert rig.proc.alive()
