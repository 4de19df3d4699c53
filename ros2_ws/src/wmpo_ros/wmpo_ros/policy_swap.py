"""Hot swap of the policy node's learned policy: verify, load, warm up, swap, roll back.

Trust model (docs/security.md): the node loads only packages that sit directly in its
policy root, are signed by a trusted key and descend from the active version in their
signed parent chain; going back is an explicit operator rollback. Every load, refusal and
rollback is logged, published on `~/policy_events` and reported on /diagnostics.

:class:`PolicySlot` (ROS-free) owns the node's active and previous policy. `request_load`
runs in one background thread, one request at a time, cheapest check first:

1. place: the package directory (symlinks resolved) is a direct child of the policy root;
2. signature: manifest.json and signature.json (size-capped) carry a valid signature by
   a trusted key; nothing is hashed yet;
3. lineage: the manifest's `parent` is the active version, or a signed package in the
   policy root whose own chain reaches it (at most `MAX_LINEAGE_DEPTH` steps). A node
   serving no package (the scripted backend) accepts any signed package as its first;
4. verify the rest (file sizes, hashes, no unlisted or pickle file, tensor shapes against
   config.json), load it (`wmpo_core.policy.loading.load_verified_policy`) and check the
   signature again over the manifest the loader hashed;
5. warm it up with one dummy inference (a wrong shape or NaN refuses it);
6. swap the node's backend reference (`swap_backend`): the inference thread picks the
   reference once per inference, so the swap falls between two inferences and every
   chunk comes from exactly one fully loaded policy. The node then publishes the new
   version on `wmpo/policy_version` (latched).

The version swapped out is kept for `rollback()`; the one before it is closed. A refused
package changes nothing: the running policy, the previous one and (see below) the
`policy_path` parameter stay as they were.

`rollback()` does not queue behind a load: it runs in its own thread at once, cancels
the load in progress (hashing stops at the next MiB, a model being built is discarded
before it could be swapped in) and every load queued before it, and swaps the previous
version back in.

ROS face (:class:`PolicySwapService`, attached to the policy node):

- parameters `policy_root` (read-only: the one folder packages are loaded from; empty =
  the folder of the package the node started with), `policy_path` (writable, but only to
  a package directory inside `policy_root`; `wmpo push` sets it), `trusted_keys`
  (read-only: a PEM public key or a folder of them; empty = no package is ever loaded) and
  `load_timeout_s`;
- `~/load_policy` (std_srvs/Trigger) loads `policy_path`. The reply waits until the load
  is done or `load_timeout_s` passed: a finished load answers `success` with the version
  and timings, a refusal answers `success=false` with every reason; a load still running
  at the timeout answers `success=false` with a message starting with "pending: load #N",
  and its verdict follows on `~/policy_events` (std_msgs/String, JSON with `"id": N`,
  latched, the last 32 kept) and /diagnostics (`load_state`, `last_load`).
  Requests queue: a second load waits for the first. The service callbacks are coroutines:
  while a reply waits, the node's executor thread goes on delivering images and
  parameter requests (the policy node spins one executor thread, see policy_node.main).
- `~/rollback` (std_srvs/Trigger) returns to the previous version (`success=false` when
  there is none), preempting any load.

After a refusal or a rollback `policy_path` is set back to the active package, so a
restarted node loads what was running, not the package that was refused.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wmpo_ros.policy_backends.base import PolicyBackend
from wmpo_ros.policy_backends.vla import (
    POLICY_PATH_PARAM,
    TRUSTED_KEYS_PARAM,
    VLAPolicyBackend,
    declare_once,
    load_verified_policy,
    trusted_key_paths,
)

LOAD_SERVICE = "~/load_policy"
ROLLBACK_SERVICE = "~/rollback"
EVENTS_TOPIC = "~/policy_events"
POLICY_ROOT_PARAM = "policy_root"
# the loader runs this much nicer than the rest of the node, so the control loop wins the CPU (Linux: per-thread nice)
LOADER_NICE = 10
# how many signed parents a package's chain may be followed through the policy root to reach the active version
MAX_LINEAGE_DEPTH = 64
_VERSION_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # what `wmpo push` names a package folder
PENDING_PREFIX = "pending: load #"


class SwapHost(Protocol):
    """What the slot needs from the policy node."""

    @property
    def backend(self) -> PolicyBackend: ...

    def swap_backend(self, new: PolicyBackend, close_old: bool = True) -> PolicyBackend: ...


@dataclass
class LoadResult:
    """Outcome of one load or rollback."""

    ok: bool
    message: str
    version: str | None = None  # the version active afterwards
    path: str = ""  # the package asked for (load) or returned to (rollback)
    kind: str = "load"  # "load" or "rollback"
    swapped: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds: verify_load, warm_up, total
    request_id: int = 0

    def event(self) -> dict[str, Any]:
        """The JSON object published on `~/policy_events`."""
        return {"id": self.request_id, "kind": self.kind, "ok": self.ok, "swapped": self.swapped,
                "version": self.version, "path": self.path, "message": self.message,
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


class _Cancelled(Exception):
    """A rollback preempted this load."""


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOADER_NICE))
    except (AttributeError, OSError):  # not Linux, or not permitted: loading still works, just unprioritized
        pass


def resolve_policy_root(policy_root: str, startup_path: str) -> str:
    """The policy root in force: `policy_root` if set, else the folder of the startup package ('' if neither)."""
    root = policy_root or (str(Path(startup_path).parent) if startup_path else "")
    return os.path.realpath(root) if root else ""


def place_reason(path: str, policy_root: str) -> str | None:
    """Why `path` may not be loaded from (None if it is a package folder directly inside `policy_root`)."""
    if not policy_root:
        return (f"parameter '{POLICY_ROOT_PARAM}' is empty and the node started without a package: "
                f"it loads from no folder")
    resolved = os.path.realpath(path)
    if os.path.dirname(resolved) != policy_root:
        return (f"{path}: outside the policy root {policy_root} (parameter '{POLICY_ROOT_PARAM}'); "
                f"packages are loaded only from folders directly inside it")
    return None


class PolicySlot:
    """Active and previous policy of a host, with background verified loading (see the module docstring).

    `options` are the vla backend options (temperature, unnorm_key, num_threads) given to
    every loaded policy; `cameras` (if given) are the cameras the host receives, and a
    policy needing another one is refused; `on_result` is called after every operation
    (in the loader or rollback thread); `policy_root` is the folder packages are loaded
    from (default: the folder of the host's package).
    """

    def __init__(self, host: SwapHost, options: Mapping[str, Any] | None = None,
                 cameras: Iterable[str] | None = None,
                 on_result: Callable[[LoadResult], None] | None = None,
                 policy_root: str = "") -> None:
        self.host = host
        self.options = dict(options or {})
        self.cameras = None if cameras is None else tuple(cameras)
        self.on_result = on_result
        self._lock = threading.Lock()  # guards _previous, _active_path and _generation
        self._swap_lock = threading.Lock()  # one swap at a time: a load's last cancel check and its swap are one step
        self._previous: PolicyBackend | None = None
        self._active_path = str(getattr(host.backend, "path", "") or "")
        self.policy_root = resolve_policy_root(policy_root, self._active_path)
        self._generation = 0  # a rollback increments it; loads submitted under an older one are cancelled
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="policy-load", initializer=_lower_priority)
        self._rollbacks = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-rollback")

    @property
    def active_version(self) -> str:
        """Version of the policy serving now."""
        return self.host.backend.version

    @property
    def active_path(self) -> str:
        """Package path of the policy serving now ('' for a non-package backend)."""
        with self._lock:
            return self._active_path

    @property
    def previous_version(self) -> str | None:
        """Version `rollback()` would return to (None if there is none)."""
        with self._lock:
            return None if self._previous is None else self._previous.version

    def next_id(self) -> int:
        """A fresh request id (results and events carry it)."""
        return next(self._ids)

    def request_load(self, path: str, trusted_keys: str | Iterable[str],
                     request_id: int | None = None) -> concurrent.futures.Future[LoadResult]:
        """Check, verify, load, warm up and swap in `path` in the background; the future never raises."""
        with self._lock:
            generation = self._generation
        rid = self.next_id() if request_id is None else request_id
        return self._executor.submit(self._guarded, "load", rid, self._load, str(path or ""), trusted_keys, generation)

    def rollback(self, request_id: int | None = None) -> concurrent.futures.Future[LoadResult]:
        """Return to the previous version now, cancelling the load in progress and any queued one."""
        with self._lock:
            self._generation += 1
        rid = self.next_id() if request_id is None else request_id
        return self._rollbacks.submit(self._guarded, "rollback", rid, self._rollback)

    def load(self, path: str, trusted_keys: str | Iterable[str], timeout: float | None = None) -> LoadResult:
        """`request_load` and wait for the outcome."""
        return self.request_load(path, trusted_keys).result(timeout)

    def _guarded(self, kind: str, request_id: int, operation: Callable[..., LoadResult], *args: Any) -> LoadResult:
        try:
            result = operation(*args)
        except Exception as exc:  # noqa: BLE001 - a bad package or a failing model never takes the node down
            result = LoadResult(False, f"{kind} failed: {type(exc).__name__}: {exc}", self.active_version,
                                str(args[0]) if args else "", kind)
        result.request_id = request_id
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as exc:  # noqa: BLE001 - reporting must not turn a load into a failure
                result.message += f" (reporting it failed: {exc!r})"
        return result

    def _lineage_reason(self, manifest: Mapping[str, Any], keys: Mapping[str, Any]) -> str | None:
        """Why the package of `manifest` does not descend from the active version (None if it does)."""
        from wmpo_core.registry.signing import signed_manifest
        from wmpo_core.registry.verify import PackageError, bounded

        active = self.host.backend
        if not getattr(active, "manifest", None):
            return None  # nothing signed is serving (scripted backend): the first package starts the chain
        active_version = active.version
        version = str(manifest.get("version"))
        if version == active_version:
            return None  # the same version again: verified in full, then answered "already active"
        chain = [version]
        parent = manifest.get("parent")
        for _ in range(MAX_LINEAGE_DEPTH):
            if parent == active_version:
                return None
            if not isinstance(parent, str) or not _VERSION_DIR_RE.match(parent) or parent in chain:
                end = "(no parent)" if parent is None else bounded(repr(parent), 80)
                return (f"version {version} does not descend from the active version {active_version}: its signed "
                        f"chain is {' <- '.join(chain)} <- {end}; to go back use ~/rollback")
            try:
                parent_manifest = signed_manifest(os.path.join(self.policy_root, parent), keys)
            except PackageError as exc:
                return (f"version {version} does not descend from the active version {active_version}: its signed "
                        f"chain {' <- '.join(chain)} reaches {parent}, which is not a signed package in the policy "
                        f"root ({bounded(str(exc), 200)})")
            if parent_manifest.get("version") != parent:
                return f"{self.policy_root}/{parent}: its manifest says version {parent_manifest.get('version')!r}"
            chain.append(parent)
            parent = parent_manifest.get("parent")
        return f"version {version}: signed chain longer than {MAX_LINEAGE_DEPTH} without reaching {active_version}"

    def _load(self, path: str, trusted_keys: str | Iterable[str], generation: int) -> LoadResult:
        from wmpo_core.registry.signing import load_trusted_keys, signed_manifest
        from wmpo_core.registry.verify import PackageError, VerificationCancelled

        start = time.perf_counter()

        def cancelled() -> bool:
            with self._lock:
                return self._generation != generation

        def refuse(reason: str) -> LoadResult:
            return LoadResult(False, f"refused {reason}", self.active_version, path)

        if not path:
            return refuse(f"parameter '{POLICY_PATH_PARAM}' is empty: nothing to load")
        if cancelled():
            return refuse(f"{path}: cancelled by a rollback requested before this load started")
        if (why := place_reason(path, self.policy_root)) is not None:
            return refuse(why)
        resolved = os.path.realpath(path)
        keys = trusted_key_paths(trusted_keys)
        try:
            if not keys:
                raise PackageError(f"parameter '{TRUSTED_KEYS_PARAM}' is empty: this node trusts no signing key, "
                                   f"so it loads no package")
            trusted = load_trusted_keys(keys)
            manifest = signed_manifest(resolved, trusted)  # cheap: two small files and one signature
            if (why := self._lineage_reason(manifest, trusted)) is not None:
                return refuse(f"{path}: {why}")
            policy = load_verified_policy(resolved, keys, should_stop=cancelled)
            loaded = time.perf_counter()
            backend = VLAPolicyBackend({**self.options, "policy_path": resolved}, policy=policy)
            missing = [c for c in backend.cameras if self.cameras is not None and c not in self.cameras]
            if missing:
                raise ValueError(f"the policy needs camera(s) {missing}, this node receives {list(self.cameras or ())} "
                                 f"(parameter 'cameras')")
            if cancelled():
                raise _Cancelled
            warm_up_s = backend.warm_up()
        except (_Cancelled, VerificationCancelled):
            return refuse(f"{path}: cancelled by a rollback")
        except (ValueError, OSError, RuntimeError) as exc:  # PackageError, PolicyError and model errors name the cause
            reason = str(exc) if path in str(exc) or resolved in str(exc) else f"{path}: {exc}"
            return refuse(reason)
        timings = {"verify_load": loaded - start, "warm_up": warm_up_s}
        with self._swap_lock:
            if cancelled():
                backend.close()
                return refuse(f"{path}: cancelled by a rollback")
            if backend.version == self.active_version:
                backend.close()
                timings["total"] = time.perf_counter() - start
                return LoadResult(True, f"version {backend.version} is already active; nothing swapped",
                                  backend.version, resolved, "load", False, timings)
            old = self.host.swap_backend(backend, close_old=False)
            with self._lock:
                dropped, self._previous = self._previous, old
                self._active_path = resolved
        if dropped is not None:
            dropped.close()  # not serving (only the active backend runs inferences)
        timings["total"] = time.perf_counter() - start
        return LoadResult(True, f"loaded {backend.version} from {resolved} (verify+load {timings['verify_load']:.2f} s, "
                                f"warm-up {warm_up_s:.2f} s); previous {old.version} kept for rollback",
                          backend.version, resolved, "load", True, timings)

    def _rollback(self) -> LoadResult:
        start = time.perf_counter()
        with self._swap_lock:
            with self._lock:
                previous = self._previous
            if previous is None:
                return LoadResult(False, f"no previous version to roll back to (active: {self.active_version})",
                                  self.active_version, self.active_path, "rollback")
            old_version = self.active_version
            self.host.swap_backend(previous, close_old=True)  # the node closes the rolled-back policy after its inference
            with self._lock:
                self._previous = None
                self._active_path = str(getattr(previous, "path", "") or "")
        return LoadResult(True, f"rolled back from {old_version} to {previous.version}", previous.version,
                          self.active_path, "rollback", True, {"total": time.perf_counter() - start})

    def close(self) -> None:
        """Stop the loader (a load in progress is cancelled) and close the previous policy."""
        with self._lock:
            self._generation += 1
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._rollbacks.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            previous, self._previous = self._previous, None
        if previous is not None:
            previous.close()


class PolicySwapService:
    """`~/load_policy`, `~/rollback`, `~/policy_events` and the load parameters on a policy node (module docstring)."""

    def __init__(self, node: Any) -> None:
        from rcl_interfaces.msg import SetParametersResult
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self.node = node
        self._result_type = SetParametersResult
        options = VLAPolicyBackend.declare_parameters(node)  # idempotent: a vla node declared them already
        self.trusted_keys = str(options.pop(TRUSTED_KEYS_PARAM) or "")
        options.pop(POLICY_PATH_PARAM)
        policy_root = str(declare_once(node, POLICY_ROOT_PARAM, "",
                                       "the only folder packages are loaded from (each package a folder directly in "
                                       "it, as `wmpo push` writes them); empty: the folder of the startup package",
                                       read_only=True) or "")
        declare_once(node, "load_timeout_s", 5.0,
                     "how long ~/load_policy and ~/rollback wait for the outcome before answering 'pending' (s)")
        self.slot = PolicySlot(node, options, getattr(node, "camera_names", None), on_result=self._report,
                               policy_root=policy_root)
        self.counts = {"loads": 0, "refused": 0, "rollbacks": 0, "rollbacks_refused": 0}
        # every verdict, latched: a `wmpo push` that was answered "pending" reads its own by id
        events_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                history=HistoryPolicy.KEEP_LAST, depth=32)
        self._events = node.create_publisher(String, EVENTS_TOPIC, events_qos)
        self._string = String
        self._diag({"policy_path": self.slot.active_path, "previous_version": "", "load_state": "idle",
                    "policy_root": self.slot.policy_root or "(none: every load is refused)",
                    "trusted_keys": self.trusted_keys or "(none: every package is refused)", **self.counts})
        node.add_on_set_parameters_callback(self._check_parameters)
        # Not the node's default group: that one is mutually exclusive, and a reply awaiting a load
        # would hold it, so no image, timer or parameter callback could run until the load is done.
        # Reentrant: a second request waits in the loader's queue, not in the executor.
        services = ReentrantCallbackGroup()
        node.create_service(Trigger, LOAD_SERVICE, self._on_load, callback_group=services)
        node.create_service(Trigger, ROLLBACK_SERVICE, self._on_rollback, callback_group=services)
        node.get_logger().info(f"policy root {self.slot.policy_root or '(none)'}: packages load only from there, "
                               f"signed by {self.trusted_keys or '(no key)'}, descending from the active version")

    def _check_parameters(self, parameters: list[Any]) -> Any:
        """`policy_path` may only name a package folder inside the policy root (or the active package)."""
        for p in parameters:
            if p.name != POLICY_PATH_PARAM:
                continue
            value = str(p.value or "")
            if not value or value == self.slot.active_path:
                continue
            if (why := place_reason(value, self.slot.policy_root)) is not None:
                self.node.get_logger().warning(f"refused to set {POLICY_PATH_PARAM}: {why}")
                self._diag({"last_refused_parameter": why})
                return self._result_type(successful=False, reason=why)
        return self._result_type(successful=True)

    def _diag(self, values: Mapping[str, Any], publish: bool = False) -> None:
        diag = getattr(self.node, "diag", None)
        if diag is not None:
            diag.update(values)
            if publish:
                diag.publish()

    @property
    def load_timeout_s(self) -> float:
        """Parameter `load_timeout_s`, read at every request (it may be changed at run time)."""
        try:
            return max(0.0, float(self.node.get_parameter("load_timeout_s").value))
        except (TypeError, ValueError):
            return 5.0  # a mistyped override must not break loading

    async def _wait(self, future: concurrent.futures.Future[LoadResult], what: str, request_id: int,
                    response: Any) -> Any:
        """Fill `response` from the outcome of `future`, or with "pending: load #N" once `load_timeout_s` passed.

        Awaited in the executor thread without blocking it: the loader thread (or a timer
        thread at the timeout) completes an rclpy future, which wakes the executor.
        """
        from rclpy.task import Future

        waiter: Future = Future(executor=self.node.executor)
        # a done callback is what makes completing the future from another thread wake the executor
        # (rclpy queues the callback as a task and triggers the executor's guard condition)
        waiter.add_done_callback(lambda _: None)
        once = threading.Lock()

        def finish(result: LoadResult | None) -> None:
            with once:
                if not waiter.done():
                    waiter.set_result(result)

        future.add_done_callback(lambda f: finish(f.result()))  # the slot's futures never raise
        timeout = self.load_timeout_s
        timer = threading.Timer(timeout, finish, (None,))
        timer.daemon = True
        timer.start()
        result = await waiter
        timer.cancel()
        if result is None:
            # not a success: nothing is swapped yet, and the package may still be refused
            response.success = False
            response.message = (f"{PENDING_PREFIX}{request_id} ({what}) not finished after {timeout:g} s; its verdict "
                                f"follows on {self.node.resolve_topic_name(EVENTS_TOPIC)} (\"id\": {request_id}), "
                                f"/diagnostics and wmpo/policy_version")
            return response
        response.success, response.message = result.ok, result.message
        return response

    async def _on_load(self, request: Any, response: Any) -> Any:
        path = str(self.node.get_parameter(POLICY_PATH_PARAM).value or "")
        request_id = self.slot.next_id()
        self._diag({"load_state": f"loading #{request_id} {path}"})
        self.node.get_logger().info(f"load requested: #{request_id} {path}")
        return await self._wait(self.slot.request_load(path, self.trusted_keys, request_id), path, request_id, response)

    async def _on_rollback(self, request: Any, response: Any) -> Any:
        request_id = self.slot.next_id()
        self.node.get_logger().warning(f"rollback requested: #{request_id} (operator rollback; cancels any load)")
        return await self._wait(self.slot.rollback(request_id), "rollback", request_id, response)

    def _report(self, result: LoadResult) -> None:
        """Loader / rollback thread: log, ~/policy_events, diagnostics, and `policy_path` back after a refusal / rollback."""
        from rclpy.parameter import Parameter

        if not result.ok:
            self.counts["refused" if result.kind == "load" else "rollbacks_refused"] += 1
        elif result.swapped:
            self.counts["loads" if result.kind == "load" else "rollbacks"] += 1
        text = f"{result.message} (#{result.request_id})"
        if result.ok and result.kind == "load":  # two call sites: rclpy fixes a logging call site's severity at its first use
            self.node.get_logger().info(text)
        else:
            self.node.get_logger().warning(text)
        try:
            self._events.publish(self._string(data=json.dumps(result.event())))
        except Exception:  # noqa: BLE001 - publishing after shutdown must not raise into the loader
            pass
        self._diag({"load_state": "idle", "last_load": text, "policy_path": self.slot.active_path,
                    "previous_version": self.slot.previous_version or "", **self.counts}, publish=True)
        current = str(self.node.get_parameter(POLICY_PATH_PARAM).value or "")
        # after a refusal, undo only what that request set: a newer push may already have written its own path
        stale = (result.kind == "rollback" and result.swapped) or (not result.ok and result.kind == "load"
                                                                   and current == result.path)
        if stale and current != self.slot.active_path:
            self.node.set_parameters([Parameter(POLICY_PATH_PARAM, Parameter.Type.STRING, self.slot.active_path)])

    def close(self) -> None:
        """Stop the loader and release the previous policy."""
        self.slot.close()


def attach_policy_swap(node: Any) -> PolicySwapService:
    """Give a policy node its `~/load_policy` and `~/rollback` services (call once, after its backend exists)."""
    return PolicySwapService(node)
