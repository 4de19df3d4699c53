#!/usr/bin/env bash
# Entry point of the robot image: ROS 2, the colcon install of wmpo and the Python venv,
# then the given command (default: `ros2 launch wmpo robot.launch.py`).
set -eo pipefail
# shellcheck disable=SC1091
source "/opt/ros/${ROS_DISTRO:-kilted}/setup.bash"
# shellcheck disable=SC1091
source /opt/wmpo/install/setup.bash
# shellcheck disable=SC1091
source /opt/wmpo/venv/bin/activate
exec "$@"
