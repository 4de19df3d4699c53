"""Simulated robot: sim_robot, arm, policy and recorder nodes from config/sim.yaml.

    ros2 launch wmpo sim.launch.py task:=lift policy:=scripted cameras:=agentview,wrist

The node list and parameters come from the graph description (the same file `wmpo up
--sim` reads); this file only maps launch arguments onto it.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from wmpo_ros.graph import launch_overrides, load_graph

# Paths relative to the bringup package root (source tree or share/wmpo after install).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "config/sim.yaml"


def _graph_nodes(context, *args, **kwargs):
    """Build one launch_ros Node per node of the graph description."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    graph = load_graph(
        arg("config"),
        overrides=launch_overrides(policy=arg("policy"), cameras=arg("cameras"), task=arg("task")),
        namespace=arg("namespace") or None,
    )
    return [Node(**spec) for spec in graph.launch_specs()]


def generate_launch_description():
    """Launch arguments and the graph nodes."""
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(PACKAGE_ROOT / DEFAULT_CONFIG),
                              description="graph description (nodes and parameters)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node ('' = the file's)"),
        DeclareLaunchArgument("policy", default_value="", description="'scripted' or a policy package path ('' = the file's)"),
        DeclareLaunchArgument("cameras", default_value="", description="comma-separated camera names ('' = the file's)"),
        DeclareLaunchArgument("task", default_value="", description="simulated task ('' = the file's)"),
        OpaqueFunction(function=_graph_nodes),
    ])
