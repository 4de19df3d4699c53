"""Named QoS profiles, each chosen on purpose (the measurements that chose them beside them)."""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

# Measured: 640x480 rgb8 at 30 Hz, RELIABLE depth 10 lost nothing (p99 16.5 ms) while
# BEST_EFFORT dropped a third (large messages fragment). With depth 2 a briefly starved
# recorder lost 16-93 of 150 frames (the publisher overwrote unacknowledged samples);
# depth 10 rides out scheduling hiccups. Readers that want only the newest frame (the
# policy) keep just the latest sample themselves, so the depth adds no control latency.
IMAGE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
# joint_states are small and frequent; the newest one is all that matters.
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
# Latched state (instruction, policy version, episode metadata): a late joiner gets the last value.
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
# Commands and action chunks: every message matters, a short queue bounds staleness.
COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
# /diagnostics follows the ROS convention (reliable, volatile).
DIAGNOSTICS_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
