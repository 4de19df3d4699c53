"""Push a signed policy package to a robot and ask its policy node to load it.

Copy protocol, the same locally and over ssh: copy into ``DIR/.incoming-<version>-<random>``,
check every hash there, flush to disk, then rename to ``DIR/<version>``. A rename within
one filesystem is atomic, so the policy node sees either no package or a complete one,
never a half-copied one, even when the link drops mid-copy.

Asking the node to load it (:func:`request_policy_load`) needs the ``ros`` extra
(``pip install 'wmpo[ros]'``): rclpy is imported only inside that function, so the rest
of this module runs on a workstation without ROS.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import fsync_path
from wmpo_core.registry.signing import verify_package
from wmpo_core.registry.verify import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    PackageError,
    canonical_json_bytes,
    check_files,
    manifest_file_hashes,
    read_manifest,
)

log = logging.getLogger(__name__)

INCOMING_PREFIX = ".incoming-"
# A version becomes a directory name on the robot: no separators, no leading dot.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class PolicyLoadError(RuntimeError):
    """The policy node could not be reached or refused the new package."""


class PolicyLoadPending(PolicyLoadError):
    """The policy node accepted the request but gave no verdict within the wait: the load may still succeed or fail."""


# the node's answer to a load still running (wmpo_ros.policy_swap.PENDING_PREFIX) and where its verdict follows
_PENDING_RE = re.compile(r"^pending: load #(\d+)")
EVENTS_TOPIC_SUFFIX = "policy_events"


@dataclass(frozen=True)
class Destination:
    """Where a package goes: a local directory (``host is None``) or ``host:dir`` over ssh."""

    path: str
    host: str | None = None

    def __str__(self) -> str:
        return self.path if self.host is None else f"{self.host}:{self.path}"


@dataclass(frozen=True)
class RemoteStep:
    """One subprocess of a remote push: argv, optional stdin text, and what it does."""

    argv: list[str]
    purpose: str
    stdin: str | None = None


@dataclass
class PushResult:
    """What a push did: the package's final location and the policy node's answer."""

    version: str
    destination: str
    policy_path: str
    already_present: bool = False
    load_message: str | None = None
    steps: list[str] = field(default_factory=list)


def parse_destination(dest: str) -> Destination:
    """``DIR`` or ``HOST:DIR`` (``user@host:dir`` too); an existing local path always wins."""
    if ":" in dest and not Path(dest).exists():
        host, _, path = dest.partition(":")
        if host and "/" not in host:
            if host.startswith("-"):  # ssh, rsync and scp would read it as an option
                raise ValueError(f"--to {dest!r}: a host name cannot start with '-'")
            if not path:
                raise ValueError(f"--to {dest!r}: remote directory after ':' is empty")
            return Destination(path=path, host=host)
    return Destination(path=dest)


def package_version(manifest: dict, source: str | Path = MANIFEST_FILE) -> str:
    """The manifest's ``version``, checked to be usable as a directory name."""
    version = manifest.get("version")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise PackageError(
            f"{source}: field 'version' must be a name of letters, digits, '.', '_', '+', '-', got {version!r}"
        )
    return version


def _package_entries(manifest: dict) -> list[str]:
    return [*sorted(manifest_file_hashes(manifest)), MANIFEST_FILE, SIGNATURE_FILE]


def _same_package(a: Path, b: Path) -> bool:
    try:
        same_manifest = canonical_json_bytes(read_manifest(a)) == canonical_json_bytes(read_manifest(b))
        return same_manifest and (a / SIGNATURE_FILE).read_bytes() == (b / SIGNATURE_FILE).read_bytes()
    except (PackageError, OSError):
        return False


def push_local(pkg_dir: str | Path, dest_dir: str | Path) -> tuple[Path, bool]:
    """Copy a (verified) package atomically into ``dest_dir/<version>``.

    Returns the final path and whether an identical package was already there (then
    nothing is copied). A different package under the same version is refused, never
    overwritten. On any failure the temporary directory is removed and nothing else changes.
    """
    src = Path(pkg_dir)
    manifest = read_manifest(src)
    version = package_version(manifest, src / MANIFEST_FILE)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / version
    if final.exists():
        if _same_package(src, final):
            return final.resolve(), True
        raise FileExistsError(f"{final}: a different package with version {version!r} is already there")
    incoming = dest / f"{INCOMING_PREFIX}{version}-{secrets.token_hex(4)}"
    incoming.mkdir()
    try:
        for name in _package_entries(manifest):
            target = incoming / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, target)
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        for directory in sorted({(incoming / n).parent for n in _package_entries(manifest)}, reverse=True):
            fsync_path(directory)
        # Re-hash the copy: a disk or transfer error must not be renamed into place.
        if reasons := check_files(incoming, manifest):
            raise PackageError(f"{incoming}: copy does not match the manifest: " + "; ".join(reasons))
        if final.exists():
            raise FileExistsError(f"{final}: appeared while copying; refusing to overwrite")
        os.rename(incoming, final)
        fsync_path(dest)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return final.resolve(), False


def _remote_path(path: str) -> str:
    # ssh, scp and rsync all start in the remote home, so '~/x' is just 'x' (quoting would stop expansion).
    if path in ("~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def remote_push_commands(
    pkg_dir: str | Path,
    host: str,
    remote_dir: str,
    version: str,
    token: str,
    hashes: dict[str, str],
    transport: str = "rsync",
    ssh: Sequence[str] = ("ssh",),
) -> list[RemoteStep]:
    """The subprocesses of a remote push, in order (same temp-then-rename protocol as local).

    ``hashes`` is the manifest's ``{file: sha256}``; the remote side re-checks them with
    ``sha256sum --check`` before the rename. ``transport`` is ``rsync`` or ``scp``.
    """
    if transport not in ("rsync", "scp"):
        raise ValueError(f"transport must be 'rsync' or 'scp', got {transport!r}")
    base = _remote_path(remote_dir.rstrip("/") or "/")
    incoming = f"{base}/{INCOMING_PREFIX}{version}-{token}"
    final = f"{base}/{version}"
    q = shlex.quote
    ssh = list(ssh)
    refuse_existing = f"{{ test ! -e {q(final)} || {{ echo {q(final + ' already exists')} >&2; exit 1; }}; }}"
    steps = [
        RemoteStep(
            [*ssh, host, f"mkdir -p {q(base)} && {refuse_existing} && mkdir {q(incoming)}"],
            f"create {incoming} (refuses if {final} exists)",
        )
    ]
    src = str(Path(pkg_dir))
    if transport == "rsync":
        # --protect-args keeps spaces and shell characters in remote paths literal.
        steps.append(
            RemoteStep(
                ["rsync", "-a", "--checksum", "--protect-args", "-e", shlex.join(ssh), f"{src}/", f"{host}:{incoming}/"],
                f"copy package into {incoming}",
            )
        )
    else:
        # scp quotes remote paths differently in its SFTP and legacy modes; only plain paths are safe in both.
        if q(incoming) != incoming:
            raise ValueError(f"remote directory {remote_dir!r}: use rsync for paths with spaces or shell characters")
        files = [os.path.join(src, n) for n in sorted({n.split("/")[0] for n in hashes} | {MANIFEST_FILE, SIGNATURE_FILE})]
        steps.append(RemoteStep(["scp", "-p", "-r", *files, f"{host}:{incoming}/"], f"copy package into {incoming}"))
    check_list = "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))
    steps.append(
        RemoteStep(
            [*ssh, host, f"cd {q(incoming)} && sha256sum --check --quiet --strict -"],
            f"re-hash the copy in {incoming}",
            stdin=check_list,
        )
    )
    steps.append(
        RemoteStep(
            [*ssh, host, f"sync && {refuse_existing} && mv -T {q(incoming)} {q(final)} && sync"],
            f"rename {incoming} to {final}",
        )
    )
    return steps


def remote_cleanup_command(host: str, remote_dir: str, version: str, token: str, ssh: Sequence[str] = ("ssh",)) -> list[str]:
    """The command that removes a failed push's temporary directory on the robot."""
    base = _remote_path(remote_dir.rstrip("/") or "/")
    return [*ssh, host, f"rm -rf {shlex.quote(f'{base}/{INCOMING_PREFIX}{version}-{token}')}"]


def push_remote(pkg_dir: str | Path, host: str, remote_dir: str, transport: str | None = None) -> str:
    """Run :func:`remote_push_commands`; return the remote package path. On failure the
    remote temporary directory is removed and the failing step is named."""
    manifest = read_manifest(pkg_dir)
    version = package_version(manifest, Path(pkg_dir) / MANIFEST_FILE)
    transport = transport or ("rsync" if shutil.which("rsync") else "scp")
    token = secrets.token_hex(4)
    steps = remote_push_commands(pkg_dir, host, remote_dir, version, token, manifest_file_hashes(manifest), transport)
    for i, step in enumerate(steps):
        log.info("push: %s", step.purpose)
        done = subprocess.run(step.argv, input=step.stdin, text=True, capture_output=True, check=False)
        if done.returncode != 0:
            if i > 0:  # step 0 failing means the temp dir was not made (or the version already exists)
                subprocess.run(remote_cleanup_command(host, remote_dir, version, token), capture_output=True, check=False)
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(
                f"push to {host}:{remote_dir} failed at '{step.purpose}' (exit {done.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )
    return f"{_remote_path(remote_dir.rstrip('/') or '/')}/{version}"


def _service_name(node: str, service: str) -> str:
    node = node if node.startswith("/") else f"/{node}"
    return f"{node.rstrip('/')}/{service}"


def _namespace_of(node: str) -> str:
    node = node if node.startswith("/") else f"/{node}"
    return node.rstrip("/").rsplit("/", 1)[0] or "/"


def request_policy_load(
    node: str, policy_path: str, timeout_s: float = 10.0, parameter: str = "policy_path", wait_s: float = 300.0
) -> str:
    """Set ``<node>``'s ``policy_path`` parameter (rcl_interfaces SetParameters), then call
    its ``~/load_policy`` service (std_srvs/Trigger) and wait for the final verdict.

    A node still loading when it answers says "pending: load #N"; then the verdict with id N
    is awaited on ``<node>/policy_events`` (latched) for up to ``wait_s`` seconds. Returns
    the node's message when the package was loaded; raises PolicyLoadError when a service is
    unreachable or the node refuses, PolicyLoadPending when no verdict came within
    ``wait_s``. Needs the ros extra."""
    try:
        import rclpy
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
    except ImportError as exc:
        raise PolicyLoadError(f"asking the policy node to load needs the ros extra (pip install 'wmpo[ros]'): {exc}") from None

    # A private context: the caller may already run rclpy (e.g. inside the loop node).
    context = rclpy.Context()
    rclpy.init(context=context)
    ros_node = None
    executor = SingleThreadedExecutor(context=context)
    try:
        # a short-lived participant: no parameter services and no /rosout publisher, so the robot's
        # nodes have fewer endpoints to discover and match while it exists
        ros_node = rclpy.create_node(f"wmpo_push_{secrets.token_hex(3)}", context=context,
                                     start_parameter_services=False, enable_rosout=False)
        executor.add_node(ros_node)
        verdicts: dict[int, dict] = {}

        def on_event(msg) -> None:
            try:
                event = json.loads(msg.data)
                verdicts[int(event["id"])] = event
            except (ValueError, KeyError, TypeError):
                pass  # not a verdict this client can read

        events_topic = _service_name(node, EVENTS_TOPIC_SUFFIX)
        events_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                history=HistoryPolicy.KEEP_LAST, depth=32)
        ros_node.create_subscription(String, events_topic, on_event, events_qos)

        def call(srv_type, name: str, request):
            client: Any = ros_node.create_client(srv_type, name)
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise PolicyLoadError(f"{name}: service not available after {timeout_s:.0f} s (is the policy node running?)")
            future = client.call_async(request)
            executor.spin_until_future_complete(future, timeout_sec=timeout_s)
            if not future.done() or future.result() is None:
                raise PolicyLoadError(f"{name}: no answer within {timeout_s:.0f} s")
            return future.result()

        set_request = SetParameters.Request()
        set_request.parameters = [
            Parameter(
                name=parameter,
                value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(policy_path)),
            )
        ]
        set_name = _service_name(node, "set_parameters")
        result = call(SetParameters, set_name, set_request).results[0]
        if not result.successful:
            raise PolicyLoadError(f"{set_name}: node refused parameter '{parameter}': {result.reason}")
        load_name = _service_name(node, "load_policy")
        response = call(Trigger, load_name, Trigger.Request())
        pending = _PENDING_RE.match(response.message or "")
        if response.success:
            return response.message
        if pending is None:
            raise PolicyLoadError(f"{load_name}: node refused {policy_path}: {response.message}")
        request_id = int(pending.group(1))
        log.info("push: %s", response.message)
        deadline = time.monotonic() + wait_s
        while request_id not in verdicts and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=min(0.2, max(0.0, deadline - time.monotonic())))
        event = verdicts.get(request_id)
        if event is None:
            raise PolicyLoadPending(
                f"{load_name}: load #{request_id} of {policy_path} gave no verdict within {wait_s:g} s; it may still "
                f"succeed or fail. Check with: ros2 topic echo --qos-durability transient_local {events_topic} "
                f"(\"id\": {request_id}), or ros2 topic echo {_service_name(_namespace_of(node), 'wmpo/policy_version')}"
            )
        if not event.get("ok"):
            raise PolicyLoadError(f"{load_name}: node refused {policy_path}: {event.get('message')}")
        return str(event.get("message"))
    finally:
        executor.shutdown()
        if ros_node is not None:
            ros_node.destroy_node()
        rclpy.try_shutdown(context=context)


def push_package(
    pkg_dir: str | Path,
    to: str,
    trusted: str | Path | Iterable[str | Path],
    node: str | None = "/policy",
    timeout_s: float = 10.0,
    transport: str | None = None,
    wait_s: float = 300.0,
) -> PushResult:
    """Verify a package locally, copy it atomically to ``to`` (``DIR`` or ``HOST:DIR``) and,
    unless ``node`` is None, ask that policy node to load it and wait up to ``wait_s`` for its verdict."""
    report = verify_package(pkg_dir, trusted)
    report.raise_for_refusal()
    dest = parse_destination(to)
    version = str(report.version)
    result = PushResult(version=version, destination=str(dest), policy_path="")
    if dest.host is None:
        final, result.already_present = push_local(pkg_dir, dest.path)
        result.policy_path = str(final)
    else:
        result.policy_path = push_remote(pkg_dir, dest.host, dest.path, transport)
    result.steps.append(f"copied to {dest.host + ':' if dest.host else ''}{result.policy_path}")
    if node is not None:
        result.load_message = request_policy_load(node, result.policy_path, timeout_s, wait_s=wait_s)
        result.steps.append(f"{node} loaded {result.policy_path}: {result.load_message}")
    return result
