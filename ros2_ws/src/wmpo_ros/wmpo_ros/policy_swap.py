"""Hot swap of the policy node's learned policy: verify, load, warm up, swap, roll back.

:class:`PolicySlot` (ROS-free) owns the node's active and previous policy. `request_load`
runs in one background thread, one request at a time:

1. verify the package against the trusted public keys (signature, file hashes, no
   unlisted or pickle file, tensor shapes against config.json);
2. load it (`wmpo_core.registry.package.load_package`) and check the signature again
   over the manifest the loader hashed;
3. warm it up with one dummy inference (a wrong shape or NaN refuses it);
4. swap the node's backend reference (`swap_backend`): the inference thread picks the
   reference once per inference, so the swap falls between two inferences and every
   chunk comes from exactly one fully loaded policy. The node then publishes the new
   version on `wmpo/policy_version` (latched).

The version swapped out is kept for `rollback()`; the one before it is closed. A refused
package changes nothing: the running policy, the previous one and (see below) the
`policy_path` parameter stay as they were.

ROS face (:class:`PolicySwapService`, attached to the policy node):

- parameters `policy_path` (writable; `wmpo push` sets it), `trusted_keys` (read-only:
  a PEM public key or a folder of them; empty = no package is ever loaded) and
  `load_timeout_s`;
- `~/load_policy` (std_srvs/Trigger) loads `policy_path`. The reply waits until the load
  is done or `load_timeout_s` passed: a finished load answers `success` with the version
  and timings, a refusal answers `success=false` with every reason; a load still running
  at the timeout answers `success=true` with a message starting with "loading", and its
  outcome follows on `wmpo/policy_version` and /diagnostics (`load_state`, `last_load`).
  Requests queue: a second load waits for the first. The service callbacks are coroutines:
  while a reply waits, the node's executor thread goes on delivering images and
  parameter requests (the policy node spins one executor thread, see policy_node.main).
- `~/rollback` (std_srvs/Trigger) returns to the previous version (`success=false` when
  there is none).

After a refusal or a rollback `policy_path` is set back to the active package, so a
restarted node loads what was running, not the package that was refused.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wmpo_ros.policy_backends.base import PolicyBackend
from wmpo_ros.policy_backends.vla import (
    POLICY_PATH_PARAM,
    TRUSTED_KEYS_PARAM,
    VLAPolicyBackend,
    declare_once,
    load_verified_policy,
)

LOAD_SERVICE = "~/load_policy"
ROLLBACK_SERVICE = "~/rollback"
# the loader runs this much nicer than the rest of the node, so the control loop wins the CPU (Linux: per-thread nice)
LOADER_NICE = 10


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


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOADER_NICE))
    except (AttributeError, OSError):  # not Linux, or not permitted: loading still works, just unprioritized
        pass


class PolicySlot:
    """Active and previous policy of a host, with background verified loading (see the module docstring).

    `options` are the vla backend options (temperature, unnorm_key, num_threads) given to
    every loaded policy; `cameras` (if given) are the cameras the host receives, and a
    policy needing another one is refused; `on_result` is called in the loader thread
    after every operation.
    """

    def __init__(self, host: SwapHost, options: Mapping[str, Any] | None = None,
                 cameras: Iterable[str] | None = None,
                 on_result: Callable[[LoadResult], None] | None = None) -> None:
        self.host = host
        self.options = dict(options or {})
        self.cameras = None if cameras is None else tuple(cameras)
        self.on_result = on_result
        self._lock = threading.Lock()  # guards _previous and _active_path
        self._previous: PolicyBackend | None = None
        self._active_path = str(getattr(host.backend, "path", "") or "")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="policy-load", initializer=_lower_priority)

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

    def request_load(self, path: str, trusted_keys: str | Iterable[str]) -> concurrent.futures.Future[LoadResult]:
        """Verify, load, warm up and swap in `path` in the background; the future never raises."""
        return self._executor.submit(self._guarded, self._load, str(path or ""), trusted_keys)

    def rollback(self) -> concurrent.futures.Future[LoadResult]:
        """Return to the previous version (queued behind any load in progress)."""
        return self._executor.submit(self._guarded, self._rollback)

    def load(self, path: str, trusted_keys: str | Iterable[str], timeout: float | None = None) -> LoadResult:
        """`request_load` and wait for the outcome."""
        return self.request_load(path, trusted_keys).result(timeout)

    def _guarded(self, operation: Callable[..., LoadResult], *args: Any) -> LoadResult:
        try:
            result = operation(*args)
        except Exception as exc:  # noqa: BLE001 - a bad package or a failing model never takes the node down
            kind = "rollback" if operation == self._rollback else "load"
            result = LoadResult(False, f"{kind} failed: {type(exc).__name__}: {exc}", self.active_version,
                                str(args[0]) if args else "", kind)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as exc:  # noqa: BLE001 - reporting must not turn a load into a failure
                result.message += f" (reporting it failed: {exc!r})"
        return result

    def _load(self, path: str, trusted_keys: str | Iterable[str]) -> LoadResult:
        start = time.perf_counter()
        if not path:
            return LoadResult(False, f"parameter '{POLICY_PATH_PARAM}' is empty: nothing to load", self.active_version)
        try:
            policy = load_verified_policy(path, trusted_keys)
            loaded = time.perf_counter()
            backend = VLAPolicyBackend({**self.options, "policy_path": path}, policy=policy)
            missing = [c for c in backend.cameras if self.cameras is not None and c not in self.cameras]
            if missing:
                raise ValueError(f"the policy needs camera(s) {missing}, this node receives {list(self.cameras or ())} "
                                 f"(parameter 'cameras')")
            warm_up_s = backend.warm_up()
        except (ValueError, OSError, RuntimeError) as exc:  # PackageError, PolicyError and model errors name the cause
            reason = str(exc) if path in str(exc) else f"{path}: {exc}"  # PackageError names the package already
            return LoadResult(False, f"refused {reason}", self.active_version, path)
        timings = {"verify_load": loaded - start, "warm_up": warm_up_s}
        if backend.version == self.active_version:
            backend.close()
            timings["total"] = time.perf_counter() - start
            return LoadResult(True, f"version {backend.version} is already active; nothing swapped",
                              backend.version, path, "load", False, timings)
        old = self.host.swap_backend(backend, close_old=False)
        with self._lock:
            dropped, self._previous = self._previous, old
            self._active_path = path
        if dropped is not None:
            dropped.close()  # not serving (only the active backend runs inferences)
        timings["total"] = time.perf_counter() - start
        return LoadResult(True, f"loaded {backend.version} from {path} (verify+load {timings['verify_load']:.2f} s, "
                                f"warm-up {warm_up_s:.2f} s); previous {old.version} kept for rollback",
                          backend.version, path, "load", True, timings)

    def _rollback(self) -> LoadResult:
        start = time.perf_counter()
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
        """Stop the loader (a load in progress finishes in the background) and close the previous policy."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            previous, self._previous = self._previous, None
        if previous is not None:
            previous.close()


class PolicySwapService:
    """`~/load_policy`, `~/rollback` and the load parameters on a policy node (see the module docstring)."""

    def __init__(self, node: Any) -> None:
        from rclpy.callback_groups import ReentrantCallbackGroup
        from std_srvs.srv import Trigger

        self.node = node
        options = VLAPolicyBackend.declare_parameters(node)  # idempotent: a vla node declared them already
        self.trusted_keys = str(options.pop(TRUSTED_KEYS_PARAM) or "")
        options.pop(POLICY_PATH_PARAM)
        declare_once(node, "load_timeout_s", 5.0,
                     "how long ~/load_policy and ~/rollback wait for the outcome before answering 'loading' (s)")
        self.slot = PolicySlot(node, options, getattr(node, "camera_names", None), on_result=self._report)
        self.counts = {"loads": 0, "refused": 0, "rollbacks": 0, "rollbacks_refused": 0}
        self._diag({"policy_path": self.slot.active_path, "previous_version": "", "load_state": "idle",
                    "trusted_keys": self.trusted_keys or "(none: every package is refused)", **self.counts})
        # Not the node's default group: that one is mutually exclusive, and a reply awaiting a load
        # would hold it, so no image, timer or parameter callback could run until the load is done.
        # Reentrant: a second request waits in the loader's queue, not in the executor.
        services = ReentrantCallbackGroup()
        node.create_service(Trigger, LOAD_SERVICE, self._on_load, callback_group=services)
        node.create_service(Trigger, ROLLBACK_SERVICE, self._on_rollback, callback_group=services)

    def _diag(self, values: Mapping[str, Any]) -> None:
        diag = getattr(self.node, "diag", None)
        if diag is not None:
            diag.update(values)

    @property
    def load_timeout_s(self) -> float:
        """Parameter `load_timeout_s`, read at every request (it may be changed at run time)."""
        try:
            return max(0.0, float(self.node.get_parameter("load_timeout_s").value))
        except (TypeError, ValueError):
            return 5.0  # a mistyped override must not break loading

    async def _wait(self, future: concurrent.futures.Future[LoadResult], what: str, response: Any) -> Any:
        """Fill `response` from the outcome of `future`, or with "loading" once `load_timeout_s` passed.

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
            response.success = True
            response.message = (f"loading {what}: not finished after {timeout:g} s; the outcome follows on "
                                f"wmpo/policy_version and /diagnostics")
            return response
        response.success, response.message = result.ok, result.message
        return response

    async def _on_load(self, request: Any, response: Any) -> Any:
        path = str(self.node.get_parameter(POLICY_PATH_PARAM).value or "")
        self._diag({"load_state": f"loading {path}"})
        self.node.get_logger().info(f"load requested: {path}")
        return await self._wait(self.slot.request_load(path, self.trusted_keys), path, response)

    async def _on_rollback(self, request: Any, response: Any) -> Any:
        self.node.get_logger().info("rollback requested")
        return await self._wait(self.slot.rollback(), "rollback", response)

    def _report(self, result: LoadResult) -> None:
        """Loader thread: log, diagnostics, and `policy_path` back to the active package after a refusal / rollback."""
        from rclpy.parameter import Parameter

        if not result.ok:
            self.counts["refused" if result.kind == "load" else "rollbacks_refused"] += 1
        elif result.swapped:
            self.counts["loads" if result.kind == "load" else "rollbacks"] += 1
        if result.ok:  # two call sites: rclpy fixes a logging call site's severity at its first use
            self.node.get_logger().info(result.message)
        else:
            self.node.get_logger().warning(result.message)
        self._diag({"load_state": "idle", "last_load": result.message, "policy_path": self.slot.active_path,
                    "previous_version": self.slot.previous_version or "", **self.counts})
        current = str(self.node.get_parameter(POLICY_PATH_PARAM).value or "")
        # after a refusal, undo only what that request set: a newer push may already have written its own path
        stale = (result.kind == "rollback" and result.swapped) or (not result.ok and current == result.path)
        if stale and current != self.slot.active_path:
            self.node.set_parameters([Parameter(POLICY_PATH_PARAM, Parameter.Type.STRING, self.slot.active_path)])

    def close(self) -> None:
        """Stop the loader and release the previous policy."""
        self.slot.close()


def attach_policy_swap(node: Any) -> PolicySwapService:
    """Give a policy node its `~/load_policy` and `~/rollback` services (call once, after its backend exists)."""
    return PolicySwapService(node)
