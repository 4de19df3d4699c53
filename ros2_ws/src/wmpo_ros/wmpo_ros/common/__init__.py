"""Shared ROS 2 plumbing for the WMPO nodes: topic names, named QoS profiles, message
conversions (images, action chunks, stamps), parameter declaration, diagnostics and the
node entry-point boilerplate.

Every node imports from here so that a topic name, a QoS choice or a message layout
lives in exactly one place.

One module per concern (as Nav2 splits its utilities), every name importable from here:

* :mod:`~wmpo_ros.common.names`: topic names;
* :mod:`~wmpo_ros.common.qos`: QoS profiles;
* :mod:`~wmpo_ros.common.stamps`: stamps and durations;
* :mod:`~wmpo_ros.common.images`: images;
* :mod:`~wmpo_ros.common.trajectories`: action chunks as JointTrajectory;
* :mod:`~wmpo_ros.common.parameters`: parameter declaration;
* :mod:`~wmpo_ros.common.diagnostics`: diagnostics;
* :mod:`~wmpo_ros.common.run`: the node entry point.
"""

from __future__ import annotations

from wmpo_ros.common.diagnostics import ERROR, LEVEL_NAMES, OK, STALE, WARN, Diagnostics, diagnostic_values
from wmpo_ros.common.images import image_to_numpy, make_camera_info, numpy_to_image
from wmpo_ros.common.names import (
    ACTION_CHUNK_TOPIC,
    APPLIED_ACTION_TOPIC,
    DIAGNOSTICS_TOPIC,
    EE_POSE_TOPIC,
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    POLICY_VERSION_TOPIC,
    SIM_ARM_COMMAND_TOPIC,
    SIM_STATE_TOPIC,
    SUCCESS_TOPIC,
    camera_info_topic,
    image_topic,
)
from wmpo_ros.common.parameters import declare
from wmpo_ros.common.qos import COMMAND_QOS, DIAGNOSTICS_QOS, IMAGE_QOS, LATCHED_QOS, SENSOR_QOS
from wmpo_ros.common.run import run_node
from wmpo_ros.common.stamps import duration_to_seconds, now_ns, ns_to_stamp, seconds_to_duration, stamp_to_ns
from wmpo_ros.common.trajectories import chunk_to_trajectory, trajectory_period_s, trajectory_to_chunk

__all__ = [
    "ACTION_CHUNK_TOPIC",
    "APPLIED_ACTION_TOPIC",
    "COMMAND_QOS",
    "DIAGNOSTICS_QOS",
    "DIAGNOSTICS_TOPIC",
    "Diagnostics",
    "EE_POSE_TOPIC",
    "EPISODE_TOPIC",
    "ERROR",
    "IMAGE_QOS",
    "INSTRUCTION_TOPIC",
    "JOINT_STATES_TOPIC",
    "LATCHED_QOS",
    "LEVEL_NAMES",
    "OK",
    "POLICY_VERSION_TOPIC",
    "SENSOR_QOS",
    "SIM_ARM_COMMAND_TOPIC",
    "SIM_STATE_TOPIC",
    "STALE",
    "SUCCESS_TOPIC",
    "WARN",
    "camera_info_topic",
    "chunk_to_trajectory",
    "declare",
    "diagnostic_values",
    "duration_to_seconds",
    "image_to_numpy",
    "image_topic",
    "make_camera_info",
    "now_ns",
    "ns_to_stamp",
    "numpy_to_image",
    "run_node",
    "seconds_to_duration",
    "stamp_to_ns",
    "trajectory_period_s",
    "trajectory_to_chunk",
]
