"""Topic names of the ROS graph: those of :mod:`wmpo_core.data.topics` (their one home), made
relative so that a namespace moves the whole graph; /sim/state stays global.
"""

from __future__ import annotations

from wmpo_core.data import topics as T


def _relative(topic: str) -> str:
    return topic.lstrip("/")


ACTION_CHUNK_TOPIC = _relative(T.ACTION_CHUNK)
APPLIED_ACTION_TOPIC = _relative(T.APPLIED_ACTION)
INSTRUCTION_TOPIC = _relative(T.INSTRUCTION)
POLICY_VERSION_TOPIC = _relative(T.POLICY_VERSION)
SUCCESS_TOPIC = _relative(T.SUCCESS)
EPISODE_TOPIC = _relative(T.EPISODE)
EE_POSE_TOPIC = _relative(T.EE_POSE)
JOINT_STATES_TOPIC = _relative(T.JOINT_STATES)
SIM_STATE_TOPIC = T.SIM_STATE  # std_msgs/String JSON: privileged simulator state
SIM_ARM_COMMAND_TOPIC = _relative(T.SIM_ARM_COMMAND)
DIAGNOSTICS_TOPIC = "/diagnostics"  # the ROS 2 convention, not a WMPO topic


def image_topic(camera: str) -> str:
    """Topic of the raw rgb8 images of camera `camera`."""
    return f"{_relative(T.CAMERA_PREFIX)}{camera}{T.IMAGE_SUFFIX}"


def camera_info_topic(camera: str) -> str:
    """Topic of the CameraInfo of camera `camera`."""
    return f"{_relative(T.CAMERA_PREFIX)}{camera}{T.CAMERA_INFO_SUFFIX}"
