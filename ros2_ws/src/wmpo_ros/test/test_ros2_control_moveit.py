"""The MoveIt arm backend without moveit_py: selecting it fails at start with what to install."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("rclpy")

from ros_helpers import start_node  # noqa: E402
from wmpo_ros.arm_backends.moveit import MoveItUnavailableError, import_moveit_py, install_hint  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(importlib.util.find_spec("moveit") is not None, reason="moveit_py is installed here"),
]


def test_error_names_the_packages_to_install(monkeypatch) -> None:
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    with pytest.raises(MoveItUnavailableError) as err:
        import_moveit_py()
    message = str(err.value)
    assert "sudo apt install ros-kilted-moveit-py" in message
    assert "sudo apt install ros-jazzy-moveit-py" in message
    assert "backend 'ros2_control'" in message
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    assert install_hint() == "sudo apt install ros-jazzy-moveit-py && source /opt/ros/jazzy/setup.bash"


def test_arm_node_with_moveit_backend_exits_with_the_instruction(tmp_path) -> None:
    proc = start_node("wmpo_ros.arm_node", {"backend": "moveit"}, 76, tmp_path)
    try:
        proc.proc.wait(timeout=60)
    finally:
        rc = proc.stop()
    assert rc != 0
    assert "ros-kilted-moveit-py" in proc.output(), proc.output()[-2000:]
