"""A node's health on /diagnostics (levels, the Diagnostics publisher, reading a status back)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from wmpo_ros.common.names import DIAGNOSTICS_TOPIC
from wmpo_ros.common.qos import DIAGNOSTICS_QOS

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class Diagnostics:
    """Publishes one DiagnosticStatus of this node on /diagnostics about once a second.

    Thread-safe: callbacks and worker threads update `level`, `message` and key values;
    a timer publishes the snapshot. Name of the status: "<node name>: <component>".
    """

    def __init__(self, node: Node, component: str = "status", hardware_id: str = "", period_s: float = 1.0) -> None:
        self._node = node
        self._name = f"{node.get_name()}: {component}"
        self._hardware_id = hardware_id
        self._lock = threading.Lock()
        self._level: bytes = OK
        self._message = "starting"
        self._values: dict[str, str] = {}
        self._pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._timer = node.create_timer(period_s, self.publish)

    def set_status(self, level: bytes, message: str) -> None:
        """Set the overall level (OK / WARN / ERROR) and a one-line message; a level change is published at once."""
        with self._lock:
            changed = level != self._level
            self._level, self._message = level, message
        if changed:
            self.publish()

    def set(self, key: str, value: Any) -> None:
        """Set one key value (shown as text)."""
        with self._lock:
            self._values[key] = _fmt(value)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several key values at once."""
        with self._lock:
            for k, v in values.items():
                self._values[k] = _fmt(v)

    def increment(self, key: str, n: int = 1) -> None:
        """Add `n` to an integer counter."""
        with self._lock:
            self._values[key] = str(int(self._values.get(key, "0")) + n)

    def get(self, key: str, default: str = "") -> str:
        """Current text of a key."""
        with self._lock:
            return self._values.get(key, default)

    @property
    def level(self) -> bytes:
        """Current level."""
        with self._lock:
            return self._level

    def status(self) -> DiagnosticStatus:
        """A snapshot as a DiagnosticStatus message."""
        with self._lock:
            return DiagnosticStatus(
                level=self._level,
                name=self._name,
                message=self._message,
                hardware_id=self._hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in sorted(self._values.items())],
            )

    def publish(self) -> None:
        """Publish the snapshot now (also called by the timer)."""
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()]
        try:
            self._pub.publish(msg)
        except Exception:  # noqa: BLE001 - publishing after shutdown must not raise into a timer
            pass


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValue list of a status as a dict."""
    return {kv.key: kv.value for kv in status.values}
