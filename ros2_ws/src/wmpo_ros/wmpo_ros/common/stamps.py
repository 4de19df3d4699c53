"""Time: builtin_interfaces Time and Duration <-> nanoseconds and seconds, and a node's clock."""

from __future__ import annotations

from builtin_interfaces.msg import Duration, Time
from rclpy.node import Node


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds_to_duration(seconds: float) -> Duration:
    """Seconds -> builtin_interfaces/Duration (rounded to the nanosecond)."""
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: Duration) -> float:
    """builtin_interfaces/Duration -> seconds."""
    return int(d.sec) + int(d.nanosec) * 1e-9


def now_ns(node: Node) -> int:
    """The node's clock (ROS time, sim time if enabled) in nanoseconds."""
    return node.get_clock().now().nanoseconds
