"""Real robot: cameras, policy, arm (ros2_control) and recorder from config/robot.yaml,
plus robot_state_publisher with the Panda description.

    ros2 launch wmpo robot.launch.py policy:=/opt/wmpo/policies/current cameras:=agentview

The node list and parameters come from the graph description (the same file `wmpo up
--robot` reads); this file only maps launch arguments onto it.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import Command, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from wmpo_ros.graph import launch_overrides, load_graph

# Paths relative to the bringup package root (source tree or share/wmpo after install).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "config/robot.yaml"
URDF = "urdf/panda.urdf.xacro"


def _graph_nodes(context, *args, **kwargs):
    """robot_state_publisher, then one launch_ros Node per node of the graph description."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    graph = load_graph(
        arg("config"),
        overrides=launch_overrides(policy=arg("policy"), cameras=arg("cameras"), task=arg("task")),
        namespace=arg("namespace") or None,
    )
    description = ParameterValue(Command(["xacro ", arg("urdf")]), value_type=str)
    state_publisher = Node(
        package="robot_state_publisher",
        executable="robot_state_publisher",
        namespace=graph.namespace,
        parameters=[{"robot_description": description}],
        output="screen",
    )
    return [state_publisher] + [Node(**spec) for spec in graph.launch_specs()]


def generate_launch_description():
    """Launch arguments, robot_state_publisher and the graph nodes."""
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(PACKAGE_ROOT / DEFAULT_CONFIG),
                              description="graph description (nodes and parameters)"),
        DeclareLaunchArgument("urdf", default_value=str(PACKAGE_ROOT / URDF), description="robot description (xacro)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node ('' = the file's)"),
        DeclareLaunchArgument("policy", default_value="", description="'scripted' or a policy package path ('' = the file's)"),
        DeclareLaunchArgument("cameras", default_value="", description="comma-separated camera names ('' = the file's)"),
        DeclareLaunchArgument("task", default_value="", description="task ('' = the file's)"),
        OpaqueFunction(function=_graph_nodes),
    ])
