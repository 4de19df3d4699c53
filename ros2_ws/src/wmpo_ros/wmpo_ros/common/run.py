"""A node's entry point: init rclpy, build the node, spin, shut down cleanly (:func:`run_node`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node


def _report(exc: BaseException, node: Node | None) -> int:
    """Say why the node failed (a configuration error in one line, anything else with its traceback); exit code 1."""
    if node is None and isinstance(exc, ValueError):
        print(f"node failed to start: {exc}", file=sys.stderr, flush=True)
    else:
        import traceback

        traceback.print_exception(exc)
    return 1


def run_node(make_node: Callable[[], Node], args: Iterable[str] | None = None, multithreaded: bool = True) -> int:
    """Init rclpy, build the node, spin until SIGINT / SIGTERM, then close and shut down cleanly.

    rclpy's default signal handlers turn SIGINT and SIGTERM into a context shutdown; the
    node's `close()` (if any) runs before `destroy_node()` so backends release hardware.
    Returns a process exit code (1 if the node could not be built, e.g. bad parameters).
    """
    rclpy.init(args=list(args) if args is not None else None)
    node: Node | None = None
    code = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=4) if multithreaded else SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError as exc:
        if rclpy.ok():
            code = _report(exc, node)
        # else: SIGINT / SIGTERM shut the context down while the executor was building its wait set
        # ("the given context is not valid"): the shutdown asked for, not a failure (seen once in a suite run).
    except Exception as exc:  # noqa: BLE001 - report why the node could not start, then exit non-zero
        code = _report(exc, node)
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutdown continues even if a backend fails to close
                    import traceback

                    traceback.print_exc()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
