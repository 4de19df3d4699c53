"""ament_python package with the WMPO ROS 2 nodes: thin ROS I/O around wmpo_core.

Builds with `colcon build` on a machine with ROS 2, and installs with pip into the
project's virtual environment (ROS 2 from PyPI wheels) for `wmpo up`.
"""

from setuptools import find_packages, setup

PACKAGE = "wmpo_ros"
NODES = [
    "sim_robot_node",
    "camera_node",
    "policy_node",
    "arm_node",
    "episode_recorder_node",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="WMPO maintainers",
    maintainer_email="maintainers@wmpo-robotics.org",
    description="ROS 2 nodes of the WMPO robot stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {PACKAGE}.{name}:main" for name in NODES],
        "wmpo.commands": [
            "up = wmpo_ros.commands.up",
            "record = wmpo_ros.commands.record",
        ],
    },
)
