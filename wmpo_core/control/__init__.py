"""Action space and the robot-side safety layer shared by every arm backend (ROS-free)."""

ACTION_NAMES: tuple[str, ...] = ("ee_dx", "ee_dy", "ee_dz", "ee_droll", "ee_dpitch", "ee_dyaw", "gripper")
ACTION_DIM = len(ACTION_NAMES)
DEFAULT_CHUNK_SIZE = 8
GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
